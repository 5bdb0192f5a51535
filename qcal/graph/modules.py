"""Module-swap mode: each Conv2d/Linear runs int8, everything else stays fp32.

For models torch.fx cannot trace (data-dependent control flow, attention masks as keyword
arguments...). Calibration hooks each layer's input and output; at run time a copy of the
model has each layer replaced by ``Int8Layer``: quantize the input with its calibrated
qparams, run the engine's prepacked int8 kernel, dequantize the output.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from qcal.batching import call_model
from qcal.int8.layer_ops import quantize_codes
from qcal.qparams import dequantize

__all__ = ["Int8Layer", "SwappedModel", "observe_layers", "swappable_layers"]


def swappable_layers(model: nn.Module) -> list[str]:
    """Qualified names of the nn.Conv2d (numeric zero padding) and nn.Linear modules, in order."""
    return [name for name, mod in model.named_modules()
            if (type(mod) is nn.Conv2d and mod.padding_mode == "zeros" and not isinstance(mod.padding, str))
            or type(mod) is nn.Linear]


@contextmanager
def observe_layers(model: nn.Module, names: list[str], tap: Callable[[int, torch.Tensor], None]) -> Iterator[None]:
    """While active, ``tap(2*i, input)`` and ``tap(2*i+1, output)`` for layer ``names[i]``."""
    modules = dict(model.named_modules())

    def hook(i: int) -> Callable:
        def observe(mod: nn.Module, args: tuple, out: torch.Tensor) -> None:
            tap(2 * i, args[0])
            tap(2 * i + 1, out)
        return observe

    handles = [modules[name].register_forward_hook(hook(i)) for i, name in enumerate(names)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class Int8Layer(nn.Module):
    """quantize -> int8 conv/linear (prepacked) -> dequantize, in place of a float layer."""

    def __init__(self, layer: Any, kernel: Callable, act_dtype: str, runner: SwappedModel) -> None:
        super().__init__()
        self.layer = layer
        self.kernel = kernel
        self.act_dtype = act_dtype
        self.runner = runner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        x_q = quantize_codes(x, layer.input_scale, layer.input_zero_point, self.act_dtype)
        results = self.runner.results
        if results is None:
            out = self.kernel(x_q, False)
        else:
            res = self.kernel(x_q, True)
            results[layer.name] = (x_q, res)
            out = res.out
        return dequantize(out, layer.output_scale, layer.output_zero_point)


class SwappedModel:
    """A copy of the float model with every quantized layer swapped for an ``Int8Layer``."""

    def __init__(self, float_model: nn.Module, layers: dict[str, Any], kernels: dict[str, Callable],
                 act_dtype: str) -> None:
        self.results: dict[str, Any] | None = None
        # the layers' own parameters are not needed in the copy: share them instead of copying
        memo = {id(p): p for p in float_model.parameters()}
        self.model = copy.deepcopy(float_model, memo).eval()
        for name, layer in layers.items():
            parent, _, leaf = name.rpartition(".")
            owner = self.model.get_submodule(parent) if parent else self.model
            setattr(owner, leaf, Int8Layer(layer, kernels[name], act_dtype, self))

    @torch.no_grad()
    def run(self, inputs: Any, results: dict[str, Any] | None = None) -> Any:
        """The swapped model on one batch; ``results`` collects (input codes, KernelResult)."""
        self.results = results
        try:
            return call_model(self.model, inputs)
        finally:
            self.results = None
