"""What the repairs read off a model: its batches, BatchNorm statistics, per-channel extremes."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from qcal.batching import call_model
from qcal.graph.ir import only_user
from qcal.graph.program import run_float
from qcal.graph.trace import trace_folded

__all__ = ["as_batches", "bn_statistics", "channel_extremes", "each_layer_output", "following_activations"]

_MODULE_ACTS: dict[type, Callable[[torch.Tensor], torch.Tensor]] = {nn.ReLU: F.relu, nn.ReLU6: F.relu6}
_FUNCTION_ACTS: dict[Any, Callable[[torch.Tensor], torch.Tensor]] = {F.relu: F.relu, torch.relu: F.relu,
                                                                      F.relu6: F.relu6}


def as_batches(inputs: Any) -> list[Any]:
    """Batches as a list: None -> [], one Tensor / tuple / dict -> [it], an iterable -> its items."""
    if inputs is None:
        return []
    if isinstance(inputs, torch.Tensor | dict | tuple):
        return [inputs]
    return list(inputs)


def bn_statistics(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor, str]]:
    """conv/linear name -> (beta, |gamma|, BN name) of the BatchNorm that follows it: its
    pre-activation's mean and spread by BN's own statistics."""
    gm = fx.symbolic_trace(model)
    modules, out = dict(gm.named_modules()), {}
    for node in gm.graph.nodes:
        user = only_user(node) if node.op == "call_module" else None
        if user is not None and user.op == "call_module" and isinstance(modules[user.target], nn.BatchNorm1d | nn.BatchNorm2d):
            bn = modules[user.target]
            gamma = bn.weight.detach() if bn.weight is not None else torch.ones(bn.num_features)
            beta = bn.bias.detach() if bn.bias is not None else torch.zeros(bn.num_features)
            out[node.target] = (beta.double().clone(), gamma.double().abs().clone(), user.target)
    return out


@torch.no_grad()
def channel_extremes(gm: nn.Module, names: list[str], batches: list[Any]) -> dict[str, list[torch.Tensor]]:
    """Per layer name, [min, max] of its output per channel over the batches (float64)."""
    modules, seen = dict(gm.named_modules()), {}

    def hook(name: str, mod: nn.Module, out: torch.Tensor) -> None:
        flat = out.detach().double().movedim(1 if isinstance(mod, nn.Conv2d) else -1, 0).reshape(out.shape[
            1 if isinstance(mod, nn.Conv2d) else -1], -1)
        lo, hi = flat.amin(1), flat.amax(1)
        if name in seen:
            lo, hi = torch.minimum(seen[name][0], lo), torch.maximum(seen[name][1], hi)
        seen[name] = [lo, hi]

    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: hook(n, m, o)) for n in names]
    try:
        for batch in batches:
            call_model(gm, batch)
    finally:
        for h in hooks:
            h.remove()
    return seen


@torch.no_grad()
def each_layer_output(qm: Any, batches: list[Any], seen: Callable[[str, torch.Tensor], None]) -> None:
    """Run a QuantizedModel's float model over the batches, calling ``seen(layer, output)`` with
    each int8 layer's float output (before a fused ReLU: copy it to keep it)."""
    root = qm.graph.module if qm.mode == "graph" else qm.float_model
    hooks = [root.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: seen(n, o)) for n in qm.quant_layers]
    try:
        for batch in batches:
            run_float(qm.graph, batch) if qm.mode == "graph" else call_model(qm.float_model, batch)
    finally:
        for h in hooks:
            h.remove()


def following_activations(qm: Any) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Per int8 layer of a graph-mode QuantizedModel, the ReLU or ReLU6 its output alone feeds
    (fused or not; a module or a function), as a function; layers with none are left out.
    Module-swap models have no graph to read it from: {}."""
    if qm.mode != "graph":
        return {}
    gm = trace_folded(copy.deepcopy(qm.float_model).eval())
    modules, out = dict(gm.named_modules()), {}
    for node in gm.graph.nodes:
        user = only_user(node) if node.op == "call_module" and node.target in qm.quant_layers else None
        if user is not None and user.op == "call_module":
            act = _MODULE_ACTS.get(type(modules[user.target]))
        else:
            act = _FUNCTION_ACTS.get(user.target) if user is not None and user.op == "call_function" else None
        if act is not None:
            out[node.target] = act
    return out
