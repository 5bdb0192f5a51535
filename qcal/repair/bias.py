"""``qcal.correct_bias``: each layer's bias absorbs the mean error quantization adds to its output.

Quantized weights (and the rounding of everything before a layer) shift the mean of each
output channel: ``E[W_q x_q] != E[W x]``. Bias correction (Nagel et al. 2019, section 4.2)
adds that mean back into the bias, layer by layer in model order, so each layer is corrected
for the errors of the corrected layers before it.

- **Empirical** (``batches`` given): the mean of each channel's pre-activation in the float
  model against the mean of the integer model's (``acc * input_scale * weight_scale + bias``,
  from qcal's exact engine) on the same batches. After each layer the corrected float model
  is calibrated again (``calib_data``, default ``batches``), so every activation range is
  re-observed as torch's observers would see the corrected model, and the QuantizedModel is
  exactly ``qcal.calibrate(corrected_float_model, calib_data, scheme)`` — what the torch
  export of that float model gives.
- **Analytic** (no data): ``E[(W_q - W) x]`` with ``E[x]`` from the statistics of the
  BatchNorm and activation feeding the layer (a normal ``N(beta, gamma^2)`` clipped by ReLU or
  ReLU6). Only layers fed directly by a BN + ReLU/ReLU6/identity chain get it; the rest are
  listed with why. The activation qparams stay as calibrated (nothing to re-observe them on).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from qcal.calibration.calibrate import calibrate
from qcal.calibration.model import QuantizedModel
from qcal.graph.trace import trace_folded
from qcal.qparams import dequantize
from qcal.repair.pairs import find_pairs
from qcal.repair.scaling import input_index
from qcal.repair.stats import as_batches, bn_statistics, each_layer_output
from qcal.repair.written import written_model

__all__ = ["BiasCorrection", "bias_correction", "correct_bias"]

Progress = Callable[[float, str], None]


@dataclass
class BiasCorrection:
    """What ``bias_correction`` did.

    Attributes:
        model: the corrected QuantizedModel.
        float_model: the float model with the corrected biases (BN folded in graph mode):
            what a torch export quantizes to get ``model``'s numbers.
        method: "empirical" or "analytic".
        shifts: per layer, the change added to each output channel's bias.
        skipped: layer -> why it was not corrected.
        notes: caveats in words.
    """

    model: QuantizedModel
    float_model: nn.Module
    method: str
    shifts: dict[str, torch.Tensor] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _editable(qm: QuantizedModel) -> nn.Module:
    """A float model whose layers are named as qm's and whose biases may change; learned codes
    (AdaRound's) are written into its weights, so that calibrating it again keeps them."""
    model = written_model(qm)
    for name in qm.quant_layers:
        mod = model.get_submodule(name)
        if mod.bias is None:
            mod.bias = nn.Parameter(torch.zeros(mod.weight.shape[0], dtype=mod.weight.dtype), requires_grad=False)
    return model.requires_grad_(False)


def _channel_mean(y: torch.Tensor, kind: str) -> tuple[torch.Tensor, int]:
    """Sum over everything but the channel (conv: dim 1, linear: the last) and the count."""
    flat = y.double().movedim(1 if kind == "conv" else -1, 0).reshape(y.shape[1 if kind == "conv" else -1], -1)
    return flat.sum(1), flat.shape[1]


@torch.no_grad()
def _float_means(qm: QuantizedModel, batches: list[Any]) -> dict[str, torch.Tensor]:
    """Per layer, the mean of each channel's pre-activation in qm's float model."""
    sums: dict[str, list] = {}

    def hook(name: str, out: torch.Tensor) -> None:
        s, n = _channel_mean(out, qm.quant_layers[name].kind)  # before an in-place ReLU
        old = sums.get(name, [0.0, 0])
        sums[name] = [old[0] + s, old[1] + n]

    each_layer_output(qm, batches, hook)
    return {name: s / n for name, (s, n) in sums.items()}


@torch.no_grad()
def _integer_mean(qm: QuantizedModel, name: str, batches: list[Any]) -> torch.Tensor:
    """The mean of each channel of layer ``name``'s integer pre-activation (before requant)."""
    layer, total, count = qm.quant_layers[name], 0.0, 0
    w_scale = layer.weight_scale.double()
    step = next((st.name for st in qm.graph.steps if st.target == name and st.kind == layer.kind), None) \
        if qm.mode == "graph" else None
    for batch in batches:
        results: dict[str, Any] = {}
        qm.runtime().run(batch, results)  # the integer run only, each layer's kernel result kept
        acc = results[step].acc if step is not None else results[name][1].acc
        s, n = _channel_mean(acc, layer.kind)
        total, count = total + s, count + n
    mean = total / count * layer.input_scale * (w_scale if w_scale.numel() > 1 else float(w_scale))
    return mean + (0.0 if layer.bias is None else layer.bias.double())


def _recalibrated(qm: QuantizedModel, model: nn.Module, calib: Any) -> QuantizedModel:
    return calibrate(model, calib, qm.recipe or qm.scheme, qm.backend, mode=qm.mode)


def _empirical(qm: QuantizedModel, batches: list[Any], calib: Any, progress: Progress) -> BiasCorrection:
    model, targets = _editable(qm), _float_means(qm, batches)
    current, shifts, names = _recalibrated(qm, model, calib), {}, list(qm.quant_layers)
    for i, name in enumerate(names):
        progress(i / len(names), f"bias correction: {name}")
        shift = targets[name] - _integer_mean(current, name, batches)
        mod = model.get_submodule(name)
        mod.bias.copy_((mod.bias.double() + shift).to(mod.bias.dtype))
        shifts[name] = shift.float()
        current = _recalibrated(qm, model, calib)
    progress(1.0, "bias correction: done")
    return BiasCorrection(current, model, "empirical", shifts)


def _clipped_normal_mean(mu: torch.Tensor, sigma: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """E[clip(x, lo, hi)] for x ~ N(mu, sigma^2), per channel (sigma 0: the clipped mean)."""
    sigma = sigma.clamp(min=1e-12)
    cdf = lambda z: 0.5 * (1 + torch.erf(z / math.sqrt(2)))  # noqa: E731
    pdf = lambda z: torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)  # noqa: E731
    a, b = (lo - mu) / sigma, (hi - mu) / sigma
    below = lo * cdf(a) if math.isfinite(lo) else 0.0
    above = hi * (1 - cdf(b)) if math.isfinite(hi) else 0.0
    return below + above + mu * (cdf(b) - cdf(a)) + sigma * (pdf(a) - pdf(b))


def _input_means(qm: QuantizedModel, stats: dict | None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Per layer B fed directly by act(BN(A)): E[x] of each input channel; why not for the rest."""
    if qm.mode != "graph":
        return {}, dict.fromkeys(qm.quant_layers, "module-swap mode: which layer feeds which is unknown")
    stats = stats if stats is not None else {k: v[:2] for k, v in bn_statistics(copy.deepcopy(qm.float_model)).items()}
    pairs, _ = find_pairs(trace_folded(copy.deepcopy(qm.float_model).eval()), "bounded")
    means, skipped = {}, {}
    for p in pairs:
        if not p.direct:
            skipped[p.second] = f"a pool or flatten sits between {p.first} and it"
        elif p.first not in stats:
            skipped[p.second] = f"{p.first} is followed by no BatchNorm: no statistics for its output"
        else:
            beta, gamma = stats[p.first]
            hi = {"relu6": 6.0, "relu": math.inf}.get(p.act, math.inf)
            lo = -math.inf if p.act == "identity" else 0.0
            means[p.second] = _clipped_normal_mean(beta.double(), gamma.double(), lo, hi)
    for name in qm.quant_layers:
        if name not in means and name not in skipped:
            skipped[name] = "its input is not the output of a BN'd layer (first layer, branch, add)"
    return means, skipped


def _analytic(qm: QuantizedModel, stats: dict | None) -> BiasCorrection:
    means, skipped = _input_means(qm, stats)
    model, layers, shifts = _editable(qm), dict(qm.quant_layers), {}
    for name, ex in means.items():
        layer, mod = layers[name], model.get_submodule(name)
        axis = 0 if layer.weight_scale.numel() > 1 else None
        w_q = dequantize(layer.weight_q, layer.weight_scale, layer.weight_zero_point, axis=axis).double()
        err = w_q - mod.weight.double()  # (O, I/g, ...) or (O, I)
        per_entry = ex[input_index(mod, ex.numel())]
        per_entry = per_entry.reshape(per_entry.shape + (1,) * (err.dim() - per_entry.dim()))
        shift = -(err * per_entry).reshape(err.shape[0], -1).sum(1)
        mod.bias.copy_((mod.bias.double() + shift).to(mod.bias.dtype))
        bias = (layer.bias.double() if layer.bias is not None else torch.zeros_like(shift)) + shift
        layers[name], shifts[name] = dataclasses.replace(layer, bias=bias.float()), shift.float()
    out = QuantizedModel(float_model=qm.float_model, scheme=qm.scheme, backend=qm.backend, mode=qm.mode,
                         fallback_reason=qm.fallback_reason, graph=qm.graph, layers=layers,
                         activations=qm.activations, reproduce_torch_bugs=qm.reproduce_torch_bugs, recipe=qm.recipe)
    note = ("analytic: activation ranges kept as calibrated (no data to re-observe them); "
            "qcal.calibrate(result.float_model, data, scheme) re-observes them for a torch export")
    return BiasCorrection(out, model, "analytic", shifts, skipped, [note])


def bias_correction(qm: QuantizedModel, batches: Any = None, *, calib_data: Any = None, stats: dict | None = None,
                    progress: Progress | None = None) -> BiasCorrection:
    """Bias correction of a QuantizedModel, with the report (see the module doc).

    Args:
        qm: a calibrated model (any scheme, recipe, backend; graph or module-swap mode).
        batches: data for the empirical correction (Tensor or iterable of batches); None: analytic.
        calib_data: what the corrected model is calibrated on again (default: ``batches``).
        stats: for the analytic correction, layer -> (mean, std) of its pre-activation,
            e.g. ``Equalization.preactivation_stats`` after ``qcal.equalize`` folded the BNs;
            default: read from the BatchNorms of ``qm.float_model``.
        progress: ``progress(fraction, message)`` once per layer.
    """
    if not isinstance(qm, QuantizedModel):
        raise TypeError(f"correct_bias takes a QuantizedModel (qcal.calibrate's result), got {type(qm).__name__}")
    data = as_batches(batches)
    if batches is not None and not data:
        raise ValueError("batches is empty: pass a Tensor or an iterable of at least one batch, or None (analytic)")
    if not data:
        return _analytic(qm, stats)
    return _empirical(qm, data, data if calib_data is None else calib_data, progress or (lambda f, m: None))


def correct_bias(qm: QuantizedModel, batches: Any = None, *, calib_data: Any = None, stats: dict | None = None,
                 progress: Progress | None = None) -> QuantizedModel:
    """A QuantizedModel whose biases absorb each layer's mean quantization error.

    Empirical from ``batches`` (activation ranges re-observed on the corrected model), else
    analytic from BN statistics. ``bias_correction`` takes the same arguments and returns
    the report (shifts, skipped layers, the corrected float model for export). Example::

        qm = qcal.calibrate(model, calib, "per_tensor_symmetric")
        fixed = qcal.correct_bias(qm, calib)
    """
    return bias_correction(qm, batches, calib_data=calib_data, stats=stats, progress=progress).model
