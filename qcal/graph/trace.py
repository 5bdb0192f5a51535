"""A model as torch.fx sees it: trace, fold BatchNorm, plan (the types live in ``qcal.graph.ir``).

``build_graph`` traces an eval-mode model with ``torch.fx``, folds conv-BN and linear-BN
exactly as torch's ``fuse_fx`` does (``fuse_conv_bn_eval``: the folded weights are
bit-identical), then lets ``qcal.graph.planner`` lay out the program torch's
``prepare_fx``/``convert_fx`` would build for the native (fbgemm/qnnpack) backend config:
a list of ``Step``s over named values, which ``qcal.graph.program`` runs in fp32 (calibration, the
reference) or in integers. Ops the integer engine cannot mirror exactly raise
``UnsupportedGraph`` so that ``calibrate(mode="auto")`` can fall back to module-swap mode.
"""

from __future__ import annotations

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from qcal.graph.ir import Graph, UnsupportedGraph, only_user
from qcal.graph.planner import plan

__all__ = ["build_graph", "trace_folded"]


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as err:  # fx raises many types (TraceError, TypeError, ...)
        raise UnsupportedGraph(f"torch.fx cannot trace {type(model).__name__}: {type(err).__name__}: {err}") from err


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
    """The eval-mode model traced by torch.fx with BN folded (raises UnsupportedGraph), ready
    for ``qcal.graph.planner.plan`` under any recipe."""
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
    graph = plan(trace_folded(model))
    if not graph.layers:
        raise UnsupportedGraph("the model has no nn.Conv2d or nn.Linear layer to quantize")
    return graph
