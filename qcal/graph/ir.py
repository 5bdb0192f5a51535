"""The program's data types: named values (``Ref``), ``Step``s over them, the ``Graph``.

``qcal.graph.trace`` builds a ``Graph`` from a model, ``qcal.graph.planner`` lays out its
steps, ``qcal.graph.program`` runs them. Kept apart so that each of those imports these types
without importing the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from torch import fx, nn

__all__ = ["NO_DEFAULT", "STEP_KINDS", "Graph", "Ref", "Step", "StepKind", "UnsupportedGraph", "only_user"]

StepKind = Literal[
    "input", "output", "quantize", "dequantize",  # program boundaries
    "conv", "linear", "add",  # integer ops with their own output qparams
    "relu", "clamp", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "cat", "shape", "identity",  # keep qparams
    "float", "info",  # fp32 ops and non-tensor values
]
STEP_KINDS: tuple[str, ...] = get_args(StepKind)


class UnsupportedGraph(Exception):
    """The model cannot run as a whole-graph integer program; the message says why."""


@dataclass(frozen=True)
class Ref:
    """A reference to a named value of the program (an fx node's output)."""

    name: str


@dataclass(frozen=True)
class Step:
    """One step of the program.

    kind: a ``StepKind``: "input", "quantize", "dequantize", "conv", "linear", "add", "relu",
    "clamp", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "cat", "shape" (moves values
    only), "identity" (eval-mode dropout: passes the codes on, observed by nobody), "float"
    (fp32 op), "info" (non-tensor values such as sizes), "output".
    ``obs`` is the observation point whose qparams the output carries (quantized kinds);
    for "quantize" it is the point observing the input value.
    """

    name: str
    kind: StepKind
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


def only_user(node: fx.Node) -> fx.Node | None:
    """The node's single user, or None (torch fuses a pattern only through single users)."""
    return next(iter(node.users)) if len(node.users) == 1 else None
