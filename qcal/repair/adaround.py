"""``qcal.adaround``: each weight's rounding direction learned layer by layer (Nagel et al. 2020).

Round-to-nearest picks each weight code alone. AdaRound picks, for every weight, floor or
ceil of ``w / scale`` so that the *layer's output* on real inputs stays closest to the float
layer's: a soft rounding ``h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1)`` per weight,
learned with Adam on ``|| f(W~ x~) - f(W x) ||^2 + lambda * sum(1 - |2 h - 1|^beta)``, beta
annealed from 20 to 2 so that every h ends at 0 or 1. ``x~`` is the layer's input in the
integer model with the layers before it already rounded (so each layer makes up for the
rounding before it), ``x`` the float model's; ``f`` is the fused ReLU when the layer has one.

The weight qparams (scale, zero point) stay those calibration chose, and the codes stay
within the scheme's range (``QSpec.quant_min/quant_max``: a 4-bit weight scheme is qint8
storage with codes in [-8, 7]); only the codes change. The activation qparams are the
calibrated ones. qcal's engine then computes exactly what the backend computes with these
codes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qcal.calibration.calibrate import calibrate
from qcal.calibration.model import QuantizedModel, QuantLayer
from qcal.qparams import dequantize
from qcal.recipes import Recipe
from qcal.repair.stats import as_batches, each_layer_output
from qcal.schemes import QSpec, Scheme

__all__ = ["adaround", "round_layer"]

Progress = Callable[[float, str], None]
ZETA, GAMMA = 1.1, -0.1


def _weight_spec(qm: QuantizedModel, name: str) -> QSpec:
    scheme = qm.recipe.scheme_for(name) if qm.recipe is not None else qm.scheme
    return scheme.weight


def _soft(v: torch.Tensor) -> torch.Tensor:
    return (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)


def _forward(layer: QuantLayer, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if layer.kind == "conv":
        y = F.conv2d(x, w, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)
    else:
        y = F.linear(x, w, layer.bias)
    return F.relu(y) if layer.relu else y


def _grid(layer: QuantLayer, w: torch.Tensor, spec: QSpec) -> tuple[torch.Tensor, ...]:
    """Per weight: floor(w / scale) + zp, the scale and zp broadcast, and the code bounds."""
    shape = (-1,) + (1,) * (w.dim() - 1)
    scale = layer.weight_scale.double().reshape(shape) if layer.weight_scale.numel() > 1 else layer.weight_scale.double()
    zp = layer.weight_zero_point.double().reshape(shape) if layer.weight_zero_point.numel() > 1 \
        else layer.weight_zero_point.double()
    lo, hi = spec.code_range()
    return torch.floor(w.double() / scale) + zp, scale, zp, lo, hi


def round_layer(layer: QuantLayer, weight: torch.Tensor, spec: QSpec, x_q: torch.Tensor, target: torch.Tensor, *,
                iterations: int = 1000, batch_size: int = 32, reg: float = 0.01, lr: float = 1e-2,
                generator: torch.Generator | None = None,
                on_step: Callable[[int], None] | None = None) -> torch.Tensor:
    """The learned integer codes of one layer (same shape and dtype as ``layer.weight_q``).

    Args:
        layer: the calibrated layer (its weight qparams and bias are used as they are).
        weight: the float (folded) weight.
        spec: the layer's weight QSpec (for the range of codes).
        x_q: the layer's inputs in the integer model, dequantized (N, ...).
        target: the float layer's outputs (N, ...), after the fused ReLU if any.
        iterations, batch_size, reg, lr: Adam steps, samples per step, rounding penalty, step size.
        generator: draws the samples of each step.
        on_step: called with the iteration number every 100 iterations.
    """
    base, scale, zp, lo, hi = _grid(layer, weight, spec)
    frac = (weight.double() / scale - torch.floor(weight.double() / scale)).clamp(0.01, 0.99)
    v = torch.log((frac - GAMMA) / (ZETA - frac)).float().requires_grad_(True)  # h(v) = frac at the start
    opt = torch.optim.Adam([v], lr=lr)
    base_f, scale_f, zp_f = base.float(), scale.float(), zp.float()
    warmup = int(0.2 * iterations)
    for it in range(iterations):
        idx = torch.randint(len(x_q), (min(batch_size, len(x_q)),), generator=generator)
        codes = (base_f + _soft(v)).clamp(lo, hi)
        loss = (_forward(layer, x_q[idx], (codes - zp_f) * scale_f) - target[idx]).pow(2).sum(1).mean()
        if it >= warmup:
            beta = 20 + (2 - 20) * (it - warmup) / max(1, iterations - warmup)
            h = _soft(v)
            loss = loss + reg * (1 - (2 * h - 1).abs().pow(beta)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if on_step is not None and it % 100 == 0:
            on_step(it)
    with torch.no_grad():
        codes = (base + (_soft(v.double()) >= 0.5).double()).clamp(lo, hi).to(layer.weight_q.dtype)
        # AdaRound's objective is this layer's reconstruction: learned codes that do not lower it
        # on the samples give way to round-to-nearest's (the calibrated layer's own codes)
        learned, nearest = (_reconstruction(layer, x_q, target, c, scale_f, zp_f) for c in (codes, layer.weight_q))
    return codes if learned <= nearest else layer.weight_q.clone()


def _reconstruction(layer: QuantLayer, x_q: torch.Tensor, target: torch.Tensor, codes: torch.Tensor,
                    scale: torch.Tensor, zp: torch.Tensor) -> float:
    """The mean squared error of the layer's output with these weight codes, over every sample."""
    return float((_forward(layer, x_q, (codes.float() - zp) * scale) - target).pow(2).sum(1).mean())


@torch.no_grad()
def _float_io(qm: QuantizedModel, batches: list[Any]) -> dict[str, torch.Tensor]:
    """Per layer, the float model's layer outputs (pre-activation, ReLU applied where fused)."""
    outs: dict[str, list[torch.Tensor]] = {name: [] for name in qm.quant_layers}
    each_layer_output(qm, batches, lambda n, o: outs[n].append(F.relu(o) if qm.quant_layers[n].relu else o.clone()))
    return {n: torch.cat(v) for n, v in outs.items()}


@torch.no_grad()
def _integer_inputs(qm: QuantizedModel, name: str, batches: list[Any]) -> torch.Tensor:
    layer, parts = qm.quant_layers[name], []
    for batch in batches:
        t = qm.trace(batch)[name]
        parts.append(dequantize(t.input_q, layer.input_scale, layer.input_zero_point))
    return torch.cat(parts)


def _with_layer(qm: QuantizedModel, name: str, layer: QuantLayer) -> QuantizedModel:
    layers = dict(qm.quant_layers)
    layers[name] = layer
    return QuantizedModel(float_model=qm.float_model, scheme=qm.scheme, backend=qm.backend, mode=qm.mode,
                          fallback_reason=qm.fallback_reason, graph=qm.graph, layers=layers,
                          activations=qm.activations, reproduce_torch_bugs=qm.reproduce_torch_bugs, recipe=qm.recipe)


def _samples(batches: list[Any], samples: int | None, generator: torch.Generator) -> list[Any]:
    """At most ``samples`` rows, drawn with the generator (Tensor batches), as batches of 64."""
    if samples is None:
        return batches
    if not all(isinstance(b, torch.Tensor) for b in batches):
        raise ValueError("samples= draws rows from Tensor batches; pass fewer batches of other forms instead")
    rows = torch.cat(batches)
    rows = rows[torch.randperm(len(rows), generator=generator)[:samples]]
    return list(rows.split(64))


def _reporter(report: Progress, i: int, layers: int, name: str, iterations: int) -> Callable[[int], None]:
    def step(it: int) -> None:
        report((i + it / iterations) / layers, f"adaround {name}: iteration {it}/{iterations}")
    return step


def adaround(model: nn.Module, batches: Any, scheme: str | Scheme | Recipe, backend: str = "fbgemm", *,
             iterations: int = 1000, samples: int | None = 256, seed: int = 0, reg: float = 0.01,
             batch_size: int = 32, mode: str = "auto", progress: Progress | None = None) -> QuantizedModel:
    """A QuantizedModel whose weight codes were learned layer by layer (AdaRound).

    Args:
        model: the float model (not modified).
        batches: calibration data (a Tensor or an iterable of batches): calibrates the
            model, then ``samples`` rows of it train the rounding.
        scheme, backend, mode: as for ``qcal.calibrate``; a weight QSpec with
            ``quant_min/quant_max`` (e.g. -8/7: 4-bit) bounds the learned codes too.
        iterations: Adam steps per layer; batch_size: samples per step.
        samples: rows used to learn the rounding (None: all of ``batches``).
        seed: seeds the samples drawn; the same seed gives the same codes.
        reg: weight of the penalty pushing each soft rounding to 0 or 1.
        progress: ``progress(fraction, message)`` per layer and every 100 iterations.

    The learning runs on one intra-op thread (restored after), as the zoo's training does:
    its steps are too small to gain from more, and a fixed count keeps the float sums, hence
    the codes, the same on machines with any number of cores.

    Example::

        four_bit = qcal.Scheme("w4", qcal.QSpec("qint8", "per_channel_symmetric", quant_min=-8, quant_max=7),
                               qcal.SCHEMES["per_channel_symmetric"].activation)
        qm = qcal.adaround(model, calib, four_bit, iterations=500)
    """
    report = progress or (lambda f, m: None)
    gen = torch.Generator().manual_seed(seed)
    data = as_batches(batches)
    qm = calibrate(model, data, scheme, backend, mode=mode)
    train = _samples(data, samples, gen)
    targets, names = _float_io(qm, train), list(qm.quant_layers)
    root = qm.graph.module if qm.mode == "graph" else qm.float_model
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny steps: extra threads cost more than they give, and one fixes the sums
    try:
        qm = _learn(qm, root, names, targets, train, gen, report, iterations=iterations, batch_size=batch_size, reg=reg)
    finally:
        torch.set_num_threads(threads)
    report(1.0, "adaround: done")
    return qm


def _learn(qm: QuantizedModel, root: nn.Module, names: list[str], targets: dict[str, torch.Tensor], train: list[Any],
           gen: torch.Generator, report: Progress, **options: Any) -> QuantizedModel:
    """Each layer's codes in turn, the model updated after each."""
    iterations = options["iterations"]
    for i, name in enumerate(names):
        report(i / len(names), f"adaround {name} ({i + 1}/{len(names)})")
        layer = qm.quant_layers[name]
        weight = root.get_submodule(name).weight.detach()
        codes = round_layer(layer, weight, _weight_spec(qm, name), _integer_inputs(qm, name, train), targets[name],
                            generator=gen, on_step=_reporter(report, i, len(names), name, iterations), **options)
        qm = _with_layer(qm, name, dataclasses.replace(layer, weight_q=codes))
    return qm
