"""``qcal.adaround``: each weight's rounding direction learned layer by layer (Nagel et al. 2020).

Round-to-nearest picks each weight code alone. AdaRound picks, for every weight, floor or
ceil of ``w / scale`` so that the *layer's output* on real inputs stays closest to the float
layer's: a soft rounding ``h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1)`` per weight,
learned with Adam on ``|| f(W~ x~) - f(W x) ||^2 + lambda * sum(1 - |2 h - 1|^beta)``, beta
annealed from 20 to 2 so that every h ends at 0 or 1. ``x~`` is the layer's input in the
integer model with the layers before it already rounded (so each layer makes up for the
rounding before it), ``x`` the float model's; ``f`` is the ReLU or ReLU6 the layer's output
alone feeds, fused or not (``qcal.repair.stats.following_activations``): errors it clips away
do not count (the equalized digits_mobilenet, 4-bit per-tensor weights, 300 iterations: the
model's output error on the calibration rows 5.86 with it, 6.88 without).

Two guards keep round-to-nearest where learning does not help: per layer, learned codes
that reconstruct the layer's output worse on the samples; per model (``model_guard``), the
learned codes unless, on the calibration batches, the model's output is closer to the float
model's (mean squared error) and agrees with its top-1 on no fewer rows. Codes stay between
round-to-nearest's codes of each channel's min and max weight, whose own codes stay fixed, so
the weights written as ``(code - zp) x scale`` (``qcal.repair.written``) re-observe to the same
scale and codes: exporters that observe the float model (PT2E) reproduce them.

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

from qcal.batching import call_model
from qcal.calibration.calibrate import calibrate
from qcal.calibration.model import QuantizedModel, QuantLayer
from qcal.qparams import dequantize
from qcal.recipes import Recipe
from qcal.repair.stats import as_batches, each_layer_output, following_activations
from qcal.schemes import QSpec, Scheme

__all__ = ["adaround", "model_error", "model_guard", "round_layer"]

Progress = Callable[[float, str], None]
Activation = Callable[[torch.Tensor], torch.Tensor]
ZETA, GAMMA = 1.1, -0.1


def _weight_spec(qm: QuantizedModel, name: str) -> QSpec:
    scheme = qm.recipe.scheme_for(name) if qm.recipe is not None else qm.scheme
    return scheme.weight


def _soft(v: torch.Tensor) -> torch.Tensor:
    return (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)


def _forward(layer: QuantLayer, x: torch.Tensor, w: torch.Tensor, act: Activation | None) -> torch.Tensor:
    if layer.kind == "conv":
        y = F.conv2d(x, w, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)
    else:
        y = F.linear(x, w, layer.bias)
    act = F.relu if layer.relu else act
    return act(y) if act is not None else y


def _per_group(t: torch.Tensor, per_channel: bool, reduce: str) -> torch.Tensor:
    """amin/amax per output channel, (O, ...) -> (O, 1, ...), or over the tensor, -> ()."""
    if not per_channel:
        return getattr(t.reshape(1, -1), reduce)(1).reshape(())
    return getattr(t.reshape(t.shape[0], -1), reduce)(1).reshape((-1,) + (1,) * (t.dim() - 1))


def _grid(layer: QuantLayer, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per weight: floor(w / scale) + zp, the scale and zp broadcast, and each code's bounds.

    The bounds are round-to-nearest's codes of the weight's channel (or tensor) min and max
    (so within the scheme's range, ``QSpec.code_range()``), and the weights that are that min
    or max keep round-to-nearest's code: a minmax observer of the weights written as codes (``qcal.repair.written``) then
    sees the same range, and an exporter that re-observes them reproduces the learned codes.
    """
    shape = (-1,) + (1,) * (w.dim() - 1)
    per_channel = layer.weight_scale.numel() > 1
    scale = layer.weight_scale.double().reshape(shape) if per_channel else layer.weight_scale.double()
    zp = layer.weight_zero_point.double().reshape(shape) if per_channel else layer.weight_zero_point.double()
    nearest = layer.weight_q.double()  # round-to-nearest is monotone: its extreme codes are the extremes'
    lo, hi = _per_group(nearest, per_channel, "amin"), _per_group(nearest, per_channel, "amax")
    extreme = (w == _per_group(w, per_channel, "amin")) | (w == _per_group(w, per_channel, "amax"))
    return torch.floor(w.double() / scale) + zp, scale, zp, lo, hi, extreme


def round_layer(layer: QuantLayer, weight: torch.Tensor, spec: QSpec, x_q: torch.Tensor, target: torch.Tensor, *,
                iterations: int = 1000, batch_size: int = 32, reg: float = 0.01, lr: float = 1e-2,
                generator: torch.Generator | None = None, act: Activation | None = None,
                on_step: Callable[[int], None] | None = None) -> torch.Tensor:
    """The learned integer codes of one layer (same shape and dtype as ``layer.weight_q``).

    Args:
        layer: the calibrated layer (its weight qparams and bias are used as they are).
        weight: the float (folded) weight.
        spec: the layer's weight QSpec (its code range bounds round-to-nearest's codes already).
        x_q: the layer's inputs in the integer model, dequantized (N, ...).
        target: the float layer's outputs (N, ...), after the fused ReLU or ``act`` if any.
        iterations, batch_size, reg, lr: Adam steps, samples per step, rounding penalty, step size.
        generator: draws the samples of each step.
        act: the ReLU/ReLU6 the layer's output feeds (unfused), applied to output and target alike:
            errors it clips away do not count.
        on_step: called with the iteration number every 100 iterations.
    """
    base, scale, zp, lo, hi, extreme = _grid(layer, weight)
    nearest = layer.weight_q.double()
    frac = (weight.double() / scale - torch.floor(weight.double() / scale)).clamp(0.01, 0.99)
    v = torch.log((frac - GAMMA) / (ZETA - frac)).float().requires_grad_(True)  # h(v) = frac at the start
    opt = torch.optim.Adam([v], lr=lr)
    base_f, scale_f, zp_f, lo_f, hi_f = base.float(), scale.float(), zp.float(), lo.float(), hi.float()
    warmup = int(0.2 * iterations)
    for it in range(iterations):
        idx = torch.randint(len(x_q), (min(batch_size, len(x_q)),), generator=generator)
        codes = torch.where(extreme, nearest.float(), torch.clamp(base_f + _soft(v), lo_f, hi_f))
        loss = (_forward(layer, x_q[idx], (codes - zp_f) * scale_f, act) - target[idx]).pow(2).sum(1).mean()
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
        codes = torch.where(extreme, nearest, torch.clamp(base + (_soft(v.double()) >= 0.5).double(), lo, hi))
        codes = codes.to(layer.weight_q.dtype)
        # AdaRound's objective is this layer's reconstruction: learned codes that do not lower it
        # on the samples give way to round-to-nearest's (the calibrated layer's own codes)
        learned, nearest = (_reconstruction(layer, x_q, target, c, scale_f, zp_f, act) for c in (codes, layer.weight_q))
    return codes if learned <= nearest else layer.weight_q.clone()


def _reconstruction(layer: QuantLayer, x_q: torch.Tensor, target: torch.Tensor, codes: torch.Tensor,
                    scale: torch.Tensor, zp: torch.Tensor, act: Activation | None) -> float:
    """The mean squared error of the layer's output with these weight codes, over every sample."""
    return float((_forward(layer, x_q, (codes.float() - zp) * scale, act) - target).pow(2).sum(1).mean())


@torch.no_grad()
def _float_io(qm: QuantizedModel, batches: list[Any], acts: dict[str, Activation]) -> dict[str, torch.Tensor]:
    """Per layer, the float model's layer outputs (after the fused ReLU or the activation in ``acts``)."""
    outs: dict[str, list[torch.Tensor]] = {name: [] for name in qm.quant_layers}

    def seen(n: str, o: torch.Tensor) -> None:
        act = F.relu if qm.quant_layers[n].relu else acts.get(n)
        outs[n].append(act(o) if act is not None else o.clone())

    each_layer_output(qm, batches, seen)
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
    acts = following_activations(qm)
    targets, names = _float_io(qm, train, acts), list(qm.quant_layers)
    root = qm.graph.module if qm.mode == "graph" else qm.float_model
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny steps: extra threads cost more than they give, and one fixes the sums
    try:
        learned = _learn(qm, root, names, targets, train, gen, report, acts, iterations=iterations,
                         batch_size=batch_size, reg=reg)
    finally:
        torch.set_num_threads(threads)
    kept, why = model_guard(learned, qm, model, data)
    report(1.0, f"adaround: {why}")
    report(1.0, "adaround: done")
    return kept


@torch.no_grad()
def model_error(qm: QuantizedModel, model: nn.Module, batches: list[Any]) -> tuple[float, float]:
    """Over the batches: the mean squared error of ``qm``'s output against the float model's
    (summed over the features of a row, averaged over rows) and the share of rows whose top-1
    differs from the float model's (0 for outputs with one feature)."""
    sq = flips = rows = 0.0
    for batch in batches:
        ref, out = _tensor(call_model(model, batch)), _tensor(call_model(qm, batch))  # (N, ...) each
        sq += float((out.double() - ref.double()).pow(2).reshape(len(ref), -1).sum(1).sum())
        if ref.dim() >= 2 and ref.shape[-1] > 1:
            flips += float((out.argmax(-1) != ref.argmax(-1)).reshape(len(ref), -1).any(1).sum())
        rows += len(ref)
    return sq / max(rows, 1), flips / max(rows, 1)


def _tensor(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else next(t for t in out if isinstance(t, torch.Tensor))


def model_guard(learned: QuantizedModel, nearest: QuantizedModel, model: nn.Module,
                batches: list[Any]) -> tuple[QuantizedModel, str]:
    """The learned model if, on the calibration batches, its output is closer to the float
    model's than round-to-nearest's (lower mean squared error) and agrees with the float top-1
    on no fewer rows; else round-to-nearest's. With the reason, in numbers.

    AdaRound fits each layer's output on a few hundred samples; a model those codes serve
    worse on the very data they were learned from is not a repair (at 8 bits, where
    round-to-nearest leaves little to gain, that is where it shows).
    """
    (e_l, f_l), (e_n, f_n) = model_error(learned, model, batches), model_error(nearest, model, batches)
    numbers = (f"output error {e_l:.4g} vs round-to-nearest's {e_n:.4g}, top-1 differing from fp32 "
               f"{100 * f_l:.2f}% vs {100 * f_n:.2f}% of the calibration rows")
    if e_l < e_n and f_l <= f_n:
        return learned, f"learned codes kept ({numbers})"
    return nearest, f"round-to-nearest kept: the learned codes do not serve the whole model better ({numbers})"


def _learn(qm: QuantizedModel, root: nn.Module, names: list[str], targets: dict[str, torch.Tensor], train: list[Any],
           gen: torch.Generator, report: Progress, acts: dict[str, Activation], **options: Any) -> QuantizedModel:
    """Each layer's codes in turn, the model updated after each."""
    iterations = options["iterations"]
    for i, name in enumerate(names):
        report(i / len(names), f"adaround {name} ({i + 1}/{len(names)})")
        layer = qm.quant_layers[name]
        weight = root.get_submodule(name).weight.detach()
        codes = round_layer(layer, weight, _weight_spec(qm, name), _integer_inputs(qm, name, train), targets[name],
                            generator=gen, act=acts.get(name), on_step=_reporter(report, i, len(names), name, iterations), **options)
        qm = _with_layer(qm, name, dataclasses.replace(layer, weight_q=codes))
    return qm
