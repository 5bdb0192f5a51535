"""FBGEMM's int16 pair saturation for one output element, as calibrated and at full range.

Why ``reduce_range`` exists: without VNNI, FBGEMM adds adjacent raw products in int16 with
saturation; activation codes <= 127 can never saturate a pair, full-range codes can.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F

from qcal.int8.common.saturation import pair_saturation_conv, pair_saturation_linear
from qcal.qparams import dequantize, qparams_from_range, qrange, quantize
from qcal.reporting.elements import channel_of

__all__ = ["pair_saturation"]

_I16_MAX = 32767


@torch.no_grad()
def pair_saturation(layer: Any, trace: Any, index: tuple[int, ...], *, reduce_range: bool
                    ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """FBGEMM's int16 pair sums for one element, as calibrated and with full-range activations.

    Without VNNI (and in its depthwise kernel even with VNNI), FBGEMM adds adjacent raw
    products ``a_2p·w_2p + a_2p+1·w_2p+1`` in int16 with saturation. With activation codes
    <= 127 (``reduce_range``) a pair is at most 2·127·128 = 32512 and cannot saturate; with
    full-range codes (up to 255) it can reach 65280. "Full range" re-quantizes the same real
    input over [0, 255] (the same real range, twice the resolution).

    Args:
        layer, trace, index: as for ``requant_steps``.
        reduce_range: whether the scheme's activations were quantized over [0, 127].

    Returns:
        (pairs, summary): one row per pair of the element's reduction (im2col (kh, kw, c)
        order) with columns pair, a (codes), w (codes), sum_calibrated, sum_full_range,
        saturates_full_range, worst_case_full_range (every code 255 where the pair's weights
        share a sign), can_saturate; summary holds the counts for the element and the layer.
    """
    sa, za = float(layer.input_scale), int(layer.input_zero_point)
    codes = trace.input_q
    qmin, qmax = qrange("quint8", reduce_range)
    s_full, z_full = qparams_from_range((qmin - za) * sa, (qmax - za) * sa, dtype="quint8")
    full = quantize(dequantize(codes, sa, za), s_full, z_full, "quint8")
    df = _element_pairs(_reduction_inputs(layer, codes, za, index),
                        _reduction_inputs(layer, full, int(z_full), index),
                        _weight_rows(layer)[channel_of(index, layer.kind)])
    risky = _risky_pairs(_weight_rows(layer))
    count_cal, count_full = _layer_saturated(layer, codes, za), _layer_saturated(layer, full, int(z_full))
    summary = {
        "max_code_calibrated": int(codes.max()) if codes.numel() else 0,
        "max_code_full_range": int(full.max()) if full.numel() else 0,
        "full_range_scale": float(s_full[0]), "full_range_zero_point": int(z_full[0]),
        "element_pairs": len(df), "element_saturated_full_range": int(df["saturates_full_range"].sum()),
        "layer_saturated_calibrated": count_cal, "layer_saturated_full_range": count_full,
        "layer_pairs": int(risky.numel()), "layer_pairs_can_saturate": int(risky.sum()),
        "element_pairs_can_saturate": int(df["can_saturate"].sum()),
    }
    return df, summary


def _outside_int16(v: Any) -> Any:
    return (v > _I16_MAX) | (v < -_I16_MAX - 1)


def _element_pairs(a_cal: torch.Tensor, a_full: torch.Tensor, w: torch.Tensor) -> pd.DataFrame:
    """One row per (k, k+1) pair of the element's reduction (odd lengths padded with a zero)."""
    if len(w) % 2:
        a_cal, a_full, w = F.pad(a_cal, (0, 1)), F.pad(a_full, (0, 1)), F.pad(w, (0, 1))
    pairs_cal = (a_cal.long() * w.long()).reshape(-1, 2)
    pairs_full = (a_full.long() * w.long()).reshape(-1, 2)
    df = pd.DataFrame({
        "pair": range(len(pairs_cal)),
        "a": [tuple(p) for p in a_cal.reshape(-1, 2).tolist()],
        "a_full_range": [tuple(p) for p in a_full.reshape(-1, 2).tolist()],
        "w": [tuple(p) for p in w.reshape(-1, 2).tolist()],
        "sum_calibrated": pairs_cal.sum(1).numpy(),
        "sum_full_range": pairs_full.sum(1).numpy(),
    })
    df["saturates_full_range"] = _outside_int16(df["sum_full_range"])
    # the worst any input could do: code 255 wherever the weights of a pair share a sign
    wp = w.reshape(-1, 2)
    df["worst_case_full_range"] = [
        255 * (hi if hi >= -lo else lo) for hi, lo in
        zip(wp.clamp(min=0).sum(1).tolist(), wp.clamp(max=0).sum(1).tolist(), strict=True)]
    df["can_saturate"] = _outside_int16(df["worst_case_full_range"])
    return df


def _risky_pairs(rows: torch.Tensor) -> torch.Tensor:
    """(O, K/2) bools: pairs that some input at code 255 would saturate."""
    if rows.shape[1] % 2:
        rows = F.pad(rows, (0, 1))
    rp = rows.reshape(rows.shape[0], -1, 2)
    return _outside_int16(255 * rp.clamp(min=0).sum(2)) | _outside_int16(255 * rp.clamp(max=0).sum(2))


def _layer_saturated(layer: Any, codes: torch.Tensor, za: int) -> int:
    """How many pairs of the whole layer saturate on these input codes."""
    if layer.kind == "conv":
        geometry = (layer.stride, layer.padding, layer.dilation, layer.groups)
        return int(pair_saturation_conv(codes, za, layer.weight_q, geometry)[1])
    return int(pair_saturation_linear(codes, layer.weight_q)[1])


def _reduction_inputs(layer: Any, codes: torch.Tensor, za: int, index: tuple[int, ...]) -> torch.Tensor:
    """The activation codes one output element reduces over, in FBGEMM's (kh, kw, c) order."""
    if layer.kind != "conv":
        return codes[index[:-1]].reshape(-1).to(torch.int64)
    n, c = int(index[0]), int(index[1])
    o, cg, kh, kw = layer.weight_q.shape
    g = c // (o // layer.groups)
    (sh, sw), (ph, pw), (dh, dw) = layer.stride, layer.padding, layer.dilation
    x = F.pad(codes[n:n + 1, g * cg:(g + 1) * cg].float(), (pw, pw, ph, ph), value=float(za))
    r, q = int(index[2]) * sh, int(index[3]) * sw
    patch = x[0, :, r:r + dh * (kh - 1) + 1:dh, q:q + dw * (kw - 1) + 1:dw]  # (cg, kh, kw)
    return patch.permute(1, 2, 0).reshape(-1).to(torch.int64)


def _weight_rows(layer: Any) -> torch.Tensor:
    """(O, K) weight codes in FBGEMM's reduction order ((kh, kw, c) for conv)."""
    w = layer.weight_q
    return (w.permute(0, 2, 3, 1) if w.dim() == 4 else w).reshape(w.shape[0], -1).to(torch.int64)
