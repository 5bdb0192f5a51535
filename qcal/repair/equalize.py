"""``qcal.equalize``: BatchNorm folded, cross-layer equalization, high-bias absorption.

Data-free quantization's first two steps (Nagel et al., ICCV 2019): fold each BatchNorm into
the conv/linear before it, then, for every pair of layers joined by a ReLU or nothing
(``qcal.repair.pairs``), move range between A's output channels and B's input channels until
both have the same per-channel weight range (``qcal.repair.scaling``). Per-tensor weight
quantization then sees one range per layer instead of one huge channel and many small ones.
High-bias absorption moves the part of A's bias every input keeps above 0 into B's bias,
narrowing the activation range.

ReLU6 does not commute with a scale, so ``relu6`` chooses: "keep" (it ends a pair: the
function is exactly kept), "bounded" (scales are limited so that no value seen in ``inputs``
clips differently: exact on those inputs, approximate elsewhere), or "replace" (ReLU6 becomes
ReLU first, as DFQ does: a different float model, whose change is reported).

The result is an ``Equalization``: the new float model (a ``torch.fx.GraphModule``, BN folded,
the caller's model untouched) and the report of what was done, what not, and why.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd
import torch
from torch import fx, nn

from qcal.batching import call_model
from qcal.graph.ir import UnsupportedGraph
from qcal.graph.trace import trace_folded
from qcal.repair.pairs import Pair, find_pairs, replace_relu6
from qcal.repair.scaling import (
    absorb_bias,
    input_index,
    input_ranges,
    output_ranges,
    pair_scales,
    rescale,
)
from qcal.repair.stats import as_batches, bn_statistics, channel_extremes

__all__ = ["RELU6_MODES", "Equalization", "equalize", "log_spread"]

Relu6Mode = Literal["keep", "bounded", "replace"]
RELU6_MODES: tuple[str, ...] = ("keep", "bounded", "replace")


@dataclass
class Equalization:
    """What ``equalize`` did: the new float model and the report.

    Attributes:
        model: the equalized float model (eval mode); the input model itself when nothing
            applied (``applied`` False).
        applied: False when the model could not be traced (module-swap models).
        relu6: the mode used.
        folded: BatchNorm modules folded into the layer before them.
        pairs: the equalized pairs, in graph order.
        scales: per pair ("A -> B"), the total scale of each channel (A divided, B multiplied).
        absorbed: per pair, the bias moved from A to B per channel (high-bias absorption).
        replaced_relu6: the ReLU6 nodes turned into ReLU (relu6="replace").
        skipped: layer -> why it starts no pair.
        notes: what does not apply and caveats, in words.
        max_output_change: largest |output difference| on ``inputs`` between the equalized
            model and the float function it keeps (the ReLU6-replaced one if replaced);
            None without inputs.
        output_magnitude: largest |output| of that float function on ``inputs``.
        replacement_change: largest |output difference| the ReLU6 replacement itself made.
        weight_ranges: per layer and output channel, the folded weight range before and after.
        preactivation_stats: per layer that had a BatchNorm, (mean, std) of each channel's
            pre-activation by BN's statistics, in the equalized model's units (what
            ``qcal.correct_bias``'s analytic mode needs once BN is folded away).
    """

    model: nn.Module
    applied: bool
    relu6: str
    folded: list[str] = field(default_factory=list)
    pairs: list[Pair] = field(default_factory=list)
    scales: dict[str, torch.Tensor] = field(default_factory=dict)
    absorbed: dict[str, torch.Tensor] = field(default_factory=dict)
    replaced_relu6: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    max_output_change: float | None = None
    output_magnitude: float | None = None
    replacement_change: float | None = None
    weight_ranges: pd.DataFrame = field(default_factory=pd.DataFrame)
    sweeps: int = 0
    preactivation_stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    def summary(self) -> str:
        """A few lines for a terminal or a log."""
        if not self.applied:
            return "equalize: nothing applied. " + " ".join(self.notes)
        lines = [f"equalize (relu6={self.relu6}): {len(self.folded)} BatchNorm folded, {len(self.pairs)} pairs "
                 f"equalized in {self.sweeps} sweeps, bias absorbed on {len(self.absorbed)}"]
        if self.replaced_relu6:
            lines.append(f"  {len(self.replaced_relu6)} ReLU6 replaced by ReLU; that alone changed the output by "
                         f"up to {_fmt(self.replacement_change)}")
        if self.max_output_change is not None:
            lines.append(f"  largest output change {self.max_output_change:.3g} (outputs up to "
                         f"{self.output_magnitude:.3g})")
        lines += [f"  not paired: {name}: {why}" for name, why in self.skipped.items()]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"Equalization(applied={self.applied}, relu6={self.relu6!r}, pairs={len(self.pairs)}, "
                f"max_output_change={self.max_output_change})")


def _fmt(x: float | None) -> str:
    return "(not measured: no inputs)" if x is None else f"{x:.3g}"


def _weight_ranges(gm: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    out = {}
    for name, mod in gm.named_modules():
        if type(mod) in (nn.Conv2d, nn.Linear):
            flat = mod.weight.detach().reshape(mod.weight.shape[0], -1)
            out[name] = (flat.amin(1).clone(), flat.amax(1).clone())
    return out


def _ranges_frame(before: dict, after: dict) -> pd.DataFrame:
    frames = [pd.DataFrame({"layer": name, "channel": range(len(lo)), "before_min": lo.double().numpy(),
                            "before_max": hi.double().numpy(), "after_min": after[name][0].double().numpy(),
                            "after_max": after[name][1].double().numpy()}) for name, (lo, hi) in before.items()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _sweep(pairs: list[Pair], modules: dict[str, nn.Module], peaks: dict[str, list[torch.Tensor]],
           totals: dict[str, torch.Tensor]) -> float:
    """One pass of equalization over every pair; the largest |log s| it applied."""
    worst = 0.0
    for p in pairs:
        a, b = modules[p.first], modules[p.second]
        channels = a.weight.shape[0]
        index = input_index(b, channels)
        lower = fixed = None
        if p.act == "relu6":
            # relu6(x / s) * s == relu6(x) on the data if max(x) <= 6 * min(s, 1); a channel that
            # clips keeps s = 1. |x| / s <= 6 also keeps the pre-activation torch observes (before
            # the clamp) within the ReLU6 range, so no channel's negative side widens it.
            lo, hi = peaks[p.first]
            fixed, lower = hi > 6.0, torch.maximum(hi, -lo) / 6.0
        s = pair_scales(output_ranges(a), input_ranges(b, index, channels), lower, fixed)
        rescale(a, b, index, s)
        if p.first in peaks:
            peaks[p.first] = [v / s for v in peaks[p.first]]
        totals[f"{p.first} -> {p.second}"] *= s
        worst = max(worst, float(s.log().abs().max()))
    return worst


def _absorb(pairs: list[Pair], modules: dict[str, nn.Module], floors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """High-bias absorption on direct ReLU pairs whose B reads no zero padding."""
    done = {}
    for p in pairs:
        b = modules[p.second]
        if p.act != "relu" or not p.direct or p.first not in floors:
            continue
        if isinstance(b, nn.Conv2d) and (b.padding == "same" or any(b.padding)):
            continue  # padded zeros would become -c: not exact
        c = floors[p.first].clamp(min=0.0)
        if float(c.max()) > 0:
            absorb_bias(modules[p.first], b, input_index(b, c.numel()), c)
            done[f"{p.first} -> {p.second}"] = c
    return done


def _floors(pairs: list[Pair], totals: dict[str, torch.Tensor], bn: dict, extremes: dict) -> dict[str, torch.Tensor]:
    """Per A, the value its pre-activation keeps above: observed on data, else BN's beta - 3|gamma|."""
    out = {}
    for p in pairs:
        if p.first in extremes:
            out[p.first] = extremes[p.first][0]
        elif p.first in bn:
            beta, gamma, _ = bn[p.first]
            out[p.first] = (beta - 3 * gamma) / totals[f"{p.first} -> {p.second}"]
    return out


def _scaled_stats(bn: dict, result: Equalization) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """BN's (beta, |gamma|) per layer, divided by the scales equalization gave its channels
    and shifted by the bias it absorbed."""
    out = {}
    for name, (beta, gamma, _) in bn.items():
        key = next((k for k in result.scales if k.split(" -> ")[0] == name), None)
        s = result.scales[key] if key else torch.ones_like(beta)
        out[name] = (beta / s, gamma / s)
    for key, c in result.absorbed.items():
        name = key.split(" -> ")[0]
        if name in out:
            out[name] = (out[name][0] - c, out[name][1])
    return out


@torch.no_grad()
def _largest_change(ref: nn.Module, new: nn.Module, batches: list[Any]) -> tuple[float | None, float | None]:
    if not batches:
        return None, None
    diff = mag = 0.0
    for batch in batches:
        y0, y1 = call_model(ref, batch), call_model(new, batch)
        diff = max(diff, float((y1.double() - y0.double()).abs().max()))
        mag = max(mag, float(y0.abs().max()))
    return diff, mag


def _not_traceable(model: nn.Module, relu6: str, err: Exception) -> Equalization:
    note = (f"{err}. Equalization needs the graph (which layer feeds which), so neither BN folding nor "
            "cross-layer equalization nor bias absorption applies; the model is returned as it is. In "
            "module-swap mode qcal.correct_bias and qcal.adaround still apply (they work layer by layer).")
    warnings.warn(f"qcal.equalize: {note}", stacklevel=3)
    return Equalization(model=model, applied=False, relu6=relu6, notes=[note])


def _check(model: Any, relu6: str, batches: list[Any], sweeps: int) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if relu6 not in RELU6_MODES:
        raise ValueError(f"unknown relu6 mode {relu6!r}; expected one of: {', '.join(RELU6_MODES)}")
    if relu6 == "bounded" and not batches:
        raise ValueError("relu6='bounded' limits the scales by the values seen: pass inputs=")
    if not isinstance(sweeps, int) or sweeps < 1:
        raise ValueError(f"sweeps must be a whole number >= 1, got {sweeps!r}")


def _balance(result: Equalization, gm: fx.GraphModule, batches: list[Any], bn: dict, sweeps: int,
             tolerance: float, absorb: bool) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Find the pairs, equalize them sweep by sweep, absorb biases, in place, into ``result``;
    returns the weight ranges before."""
    result.pairs, result.skipped = find_pairs(gm, result.relu6)
    before, modules = _weight_ranges(gm), dict(gm.named_modules())
    firsts = [p.first for p in result.pairs]
    extremes = channel_extremes(gm, firsts, batches)
    peaks = {p.first: extremes[p.first] for p in result.pairs if p.act == "relu6"}
    result.scales = {f"{p.first} -> {p.second}": torch.ones(modules[p.first].weight.shape[0], dtype=torch.float64)
                     for p in result.pairs}
    for result.sweeps in range(1, sweeps + 1):
        if _sweep(result.pairs, modules, peaks, result.scales) <= tolerance:
            break
    if absorb:
        extremes = channel_extremes(gm, firsts, batches)  # floors of the equalized layers
        result.absorbed = _absorb(result.pairs, modules, _floors(result.pairs, result.scales, bn, extremes))
        if not batches and result.absorbed:
            result.notes.append("bias absorbed from BN statistics (beta - 3|gamma|): exact only where a channel "
                                "never falls below that; pass inputs= to use the floors seen on data")
    return before


@torch.no_grad()
def equalize(model: nn.Module, inputs: Any = None, *, relu6: Relu6Mode = "keep", absorb: bool = True,
             sweeps: int = 20, tolerance: float = 1e-7) -> Equalization:
    """A new float model with BatchNorm folded, cross-layer equalization and high-bias absorption.

    Args:
        model: an eval-mode model torch.fx can trace (not modified).
        inputs: optional batches (a Tensor, or an iterable of Tensors / arg tuples / kwarg
            dicts): the output change is measured on them, absorption takes each channel's
            observed floor instead of BN's ``beta - 3|gamma|``, and relu6="bounded" needs them.
        relu6: "keep" (ReLU6 ends a pair), "bounded" (scales limited so no value of
            ``inputs`` clips differently), "replace" (ReLU6 -> ReLU first, as in DFQ).
        absorb: high-bias absorption on ReLU pairs (exact where a channel stays above its
            floor and B has no zero padding; pairs with padding are left alone).
        sweeps: passes over the pairs at most (a chain converges in a few); stops when no
            scale moves by more than ``tolerance`` (in log).

    Returns:
        An ``Equalization``; ``.model`` is the new float model. Untraceable models come back
        unchanged with ``applied=False`` and the reason (and a warning).

    Example::

        eq = qcal.equalize(model, calib_batches)
        print(eq.summary())
        qm = qcal.calibrate(eq.model, calib_batches, "per_tensor_symmetric")
    """
    batches = as_batches(inputs)
    _check(model, relu6, batches, sweeps)
    base = copy.deepcopy(model).eval()
    try:
        bn = bn_statistics(base)
        gm = copy.deepcopy(trace_folded(base))
    except (UnsupportedGraph, Exception) as err:  # fx raises many types
        return _not_traceable(model, relu6, err if isinstance(err, UnsupportedGraph) else UnsupportedGraph(
            f"torch.fx cannot trace {type(model).__name__}: {type(err).__name__}: {err}"))
    result = Equalization(model=gm, applied=True, relu6=relu6, folded=[v[2] for v in bn.values()])
    target: nn.Module = base
    if relu6 == "replace":
        result.replaced_relu6 = replace_relu6(gm)
        target = copy.deepcopy(gm)
        result.replacement_change = _largest_change(base, target, batches)[0]
    before = _balance(result, gm, batches, bn, sweeps, tolerance, absorb)
    if relu6 == "bounded":
        result.notes.append("ReLU6 pairs were scaled within the ranges seen in inputs: exact on them, "
                            "an input driving a channel past them may clip where the original did not")
    result.weight_ranges = _ranges_frame(before, _weight_ranges(gm))
    result.preactivation_stats = _scaled_stats(bn, result)
    result.max_output_change, result.output_magnitude = _largest_change(target, gm, batches)
    return result


def log_spread(ranges: pd.DataFrame, layer: str, when: str = "after") -> float:
    """log10 of the ratio between a layer's largest and smallest channel range (a nonzero one)."""
    rows = ranges[ranges["layer"] == layer]
    r = (rows[f"{when}_max"] - rows[f"{when}_min"]).to_numpy()
    r = r[r > 0]
    return math.log10(r.max() / r.min()) if len(r) else 0.0
