"""A model as torch.fx sees it: trace, fold BatchNorm, and the program's data types.

``build_graph`` traces an eval-mode model with ``torch.fx``, folds conv-BN and linear-BN
exactly as torch's ``fuse_fx`` does (``fuse_conv_bn_eval``: the folded weights are
bit-identical), then lets ``qcal.planner`` lay out the program torch's
``prepare_fx``/``convert_fx`` would build for the native (fbgemm/qnnpack) backend config:
a list of ``Step``s over named values, which ``qcal.program`` runs in fp32 (calibration, the
reference) or in integers. Ops the integer engine cannot mirror exactly raise
``UnsupportedGraph`` so that ``calibrate(mode="auto")`` can fall back to module-swap mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

__all__ = ["NO_DEFAULT", "Graph", "Ref", "Step", "UnsupportedGraph", "build_graph", "only_user", "trace_folded"]


class UnsupportedGraph(Exception):
    """The model cannot run as a whole-graph integer program; the message says why."""


@dataclass(frozen=True)
class Ref:
    """A reference to a named value of the program (an fx node's output)."""

    name: str


@dataclass(frozen=True)
class Step:
    """One step of the program.

    kind: "input", "quantize", "dequantize", "conv", "linear", "add", "relu", "clamp",
    "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "shape" (moves values only),
    "identity" (eval-mode dropout: passes the codes on, observed by nobody),
    "float" (fp32 op), "info" (non-tensor values such as sizes), "output".
    ``obs`` is the observation point whose qparams the output carries (quantized kinds);
    for "quantize" it is the point observing the input value.
    """

    name: str
    kind: str
    op: str = ""
    target: Any = None
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    obs: int | None = None
    relu: bool = False
    clamp: tuple[float, float] | None = None

    @property
    def refs(self) -> list[str]:
        """Names of the values this step reads."""
        out: list[str] = []
        fx.node.map_aggregate((self.args, self.kwargs), lambda a: out.append(a.name) if isinstance(a, Ref) else a)
        return out


@dataclass
class Graph:
    """The folded fp32 module plus the program planned over it.

    Attributes:
        module: the folded modules and attributes the steps refer to (a plain nn.Module
            holding the traced GraphModule's children, so that it pickles).
        steps: the program, in execution order.
        obs_names: a label per observation point (the first value it observes).
        layers: names of the conv/linear steps (their module's qualified name).
        inputs: (placeholder name, argument name, default or ``NO_DEFAULT``) per model input.
        obs_specs: the activation QSpec of each observation point (its owner's scheme).
    """

    module: nn.Module
    steps: list[Step]
    obs_names: list[str]
    layers: list[str]
    inputs: list[tuple[str, str, Any]] = field(default_factory=list)
    obs_specs: list[Any] = field(default_factory=list)


NO_DEFAULT = "<no default>"


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as err:  # fx raises many types (TraceError, TypeError, ...)
        raise UnsupportedGraph(f"torch.fx cannot trace {type(model).__name__}: {type(err).__name__}: {err}") from err


def only_user(node: fx.Node) -> fx.Node | None:
    """The node's single user, or None (torch fuses a pattern only through single users)."""
    return next(iter(node.users)) if len(node.users) == 1 else None


def _fold_batchnorm(gm: fx.GraphModule) -> None:
    """Fold conv2d-BN2d and linear-BN1d pairs in place, as torch's fuse_fx does."""
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or calls[node.target] != 1:
            continue
        mod, user = modules[node.target], only_user(node)
        if user is None or user.op != "call_module":
            continue
        bn = modules[user.target]
        if type(mod) is nn.Conv2d and type(bn) is nn.BatchNorm2d:
            fused = fuse_conv_bn_eval(mod, bn)
        elif type(mod) is nn.Linear and type(bn) is nn.BatchNorm1d:
            fused = fuse_linear_bn_eval(mod, bn)
        else:
            continue
        parent, _, leaf = node.target.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, leaf, fused)
        user.replace_all_uses_with(node)
        gm.graph.erase_node(user)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()



def trace_folded(model: nn.Module) -> fx.GraphModule:
    """The eval-mode model traced by torch.fx with BN folded (raises UnsupportedGraph)."""
    if model.training:
        raise ValueError("build_graph needs an eval-mode model (BatchNorm folds with running statistics)")
    gm = _trace(model)
    _fold_batchnorm(gm)
    return gm


@torch.no_grad()
def build_graph(model: nn.Module) -> Graph:
    """Trace ``model`` (in eval mode), fold BN, plan the program.

    ``model`` is not modified: the traced graph holds its own containers, and folding
    creates new conv/linear modules (the graph shares the other modules with ``model``).

    Raises:
        UnsupportedGraph: the model cannot be traced, or holds an op qcal's engine does not
            mirror bit for bit (the message names it).
    """
    from qcal.planner import plan

    gm = trace_folded(model)
    graph = plan(gm)
    if not graph.layers:
        raise UnsupportedGraph("the model has no nn.Conv2d or nn.Linear layer to quantize")
    return graph
