"""Where cross-layer equalization applies: conv/linear pairs of a traced, BN-folded graph.

A pair is a conv or linear ``A`` whose output reaches a conv or linear ``B`` through a chain
of single-user nodes that each commute with a positive per-channel scale: ReLU, identity
(nn.Identity, eval-mode dropout), max and average pooling, flatten (into a Linear). Scaling
A's output channel ``i`` by ``1/s_i`` and B's input channel ``i`` by ``s_i`` then leaves the
model's function unchanged. ReLU6 is not positively homogeneous (``relu6(s x) != s relu6(x)``
once ``x`` clips), so it ends a chain unless the caller replaces it with ReLU or asks for the
data-bounded rule (``qcal.repair.equalize``). Anything else (a residual add, a branch, a
shared module, a grouped B whose groups do not line up) ends the chain, and the reason is
recorded.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = ["Pair", "find_pairs", "replace_relu6"]

_RELU_FUNCS = {F.relu, torch.relu, torch.relu_}
_RELU6_FUNCS = {F.relu6}
_POOL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_POOL_FUNCS = {F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, torch.max_pool2d}
_FLATTEN_FUNCS = {torch.flatten}
_PASS_MODULES = (nn.Identity, nn.Dropout)


@dataclass(frozen=True)
class Pair:
    """Two layers joined by scale-commuting ops.

    Attributes:
        first, second: module names of A and B (B reads A's output channels).
        act: "relu", "relu6" (bounded rule only) or "identity" (no activation between).
        act_node: the fx node of the activation (None for identity), where ranges are seen.
        direct: True when only the activation sits between A and B (no pool, no flatten),
            which high-bias absorption needs.
    """

    first: str
    second: str
    act: str
    act_node: str | None
    direct: bool


def _is_relu6(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        mod = modules[node.target]
        return type(mod) is nn.ReLU6 or (type(mod) is nn.Hardtanh and (mod.min_val, mod.max_val) == (0.0, 6.0))
    if node.op == "call_function" and node.target is F.hardtanh:
        return tuple(node.args[1:3]) == (0.0, 6.0) or (node.kwargs.get("min_val"), node.kwargs.get("max_val")) == (0.0, 6.0)
    return node.op == "call_function" and node.target in _RELU6_FUNCS


def _kind(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """What a node is to a chain: layer, relu, relu6, pool, flatten, pass, or stop."""
    if node.op == "call_module":
        mod = modules[node.target]
        if type(mod) in (nn.Conv2d, nn.Linear):
            return "layer"
        if type(mod) is nn.ReLU:
            return "relu"
        if _is_relu6(node, modules):
            return "relu6"
        if isinstance(mod, _POOL_MODULES):
            return "pool"
        if type(mod) is nn.Flatten:
            return "flatten"
        return "pass" if isinstance(mod, _PASS_MODULES) else "stop"
    if node.op == "call_function":
        if node.target in _RELU_FUNCS:
            return "relu"
        if _is_relu6(node, modules):
            return "relu6"
        if node.target in _POOL_FUNCS:
            return "pool"
        return "flatten" if node.target in _FLATTEN_FUNCS else "stop"
    if node.op == "call_method":
        return {"relu": "relu", "relu_": "relu", "flatten": "flatten"}.get(node.target, "stop")
    return "stop"


def _users(node: fx.Node) -> list[fx.Node]:
    return [u for u in node.users if not (u.op == "call_function" and u.target is operator.getitem)]


def _fits(a: nn.Module, b: nn.Module, flattened: bool) -> str | None:
    """Why B cannot take A's per-channel scales on its input, or None when it can."""
    channels = a.out_channels if isinstance(a, nn.Conv2d) else a.out_features
    if isinstance(b, nn.Conv2d):
        if flattened:
            return "a flatten sits before a conv"
        return None if b.in_channels == channels else f"{b.in_channels} input channels, {channels} produced"
    if b.in_features % channels:
        return f"{b.in_features} input features are not a whole number of features per channel of {channels}"
    return None if flattened or b.in_features == channels else "a conv's map reaches a linear without a flatten"


def _follow(start: fx.Node, modules: dict[str, nn.Module], relu6: str, calls: dict[str, int]) -> Pair | str:
    """The pair starting at conv/linear ``start``, or why there is none."""
    act, act_node, direct, flattened, node = "identity", None, True, False, start
    while True:
        users = _users(node)
        if len(users) != 1:
            return f"{node.name}'s output has {len(users)} users (a branch or the model output)"
        node = users[0]
        kind = _kind(node, modules)
        if kind == "layer":
            break
        if kind in ("relu", "relu6"):
            if kind == "relu6" and relu6 == "keep":
                return f"ReLU6 at {node.name} (clips: equalizing through it would change the function)"
            if act != "identity":
                return f"a second activation at {node.name}"
            act, act_node = kind, node.name
        elif kind == "pool":
            direct = False
        elif kind == "flatten":
            direct, flattened = False, True
        elif kind == "stop":
            return f"{node.name} ({node.op} {getattr(node.target, '__name__', node.target)}) does not commute with per-channel scales"
    if calls.get(node.target, 0) != 1:
        return f"{node.target} is called {calls.get(node.target)} times"
    why = _fits(modules[start.target], modules[node.target], flattened)
    if why:
        return f"{node.target}: {why}"
    return Pair(start.target, node.target, act, act_node, direct and not flattened)


def find_pairs(gm: fx.GraphModule, relu6: str = "keep") -> tuple[list[Pair], dict[str, str]]:
    """Every equalizable pair in graph order, and for each other layer why it starts none.

    Args:
        gm: a traced model with BN folded (``qcal.graph.trace.trace_folded``).
        relu6: "keep" (ReLU6 ends a chain), "bounded" (it joins a pair; the caller limits
            the scales), "replace" (the caller has already turned ReLU6 into ReLU).
    """
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs, skipped = [], {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or _kind(node, modules) != "layer":
            continue
        if calls[node.target] != 1:
            skipped[node.target] = f"called {calls[node.target]} times"
            continue
        found = _follow(node, modules, relu6, calls)
        if isinstance(found, Pair):
            pairs.append(found)
        else:
            skipped[node.target] = found
    return pairs, skipped


def replace_relu6(gm: fx.GraphModule) -> list[str]:
    """Turn every ReLU6 (module, F.relu6, hardtanh(0, 6)) into ReLU, in place; the names."""
    modules, replaced = dict(gm.named_modules()), []
    for node in gm.graph.nodes:
        if not _is_relu6(node, modules):
            continue
        if node.op == "call_module":
            parent, _, leaf = node.target.rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, leaf, nn.ReLU())
        else:
            node.target, node.args, node.kwargs = F.relu, node.args[:1], {}
        replaced.append(node.name)
    gm.recompile()
    return replaced
