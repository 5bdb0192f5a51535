"""One output element of one int8 layer, worked from int8 inputs to the final 8-bit value.

The dashboard's Requant math page shows these tables. ``requant_table`` lists, per output
channel, ``requant_scale = input_scale * weight_scale / output_scale`` and the multiplier
each backend actually uses; ``requant_steps`` replays one element's accumulator through
every rounding and clamp of a backend; ``backend_reference_element`` asks torch's own
quantized engine for the same element (an oracle for display, never used for inference);
``pair_saturation`` shows where FBGEMM's int16 pair sums would saturate with full-range
activations, which is why its default activation observer uses ``reduce_range``.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F

from qcal.int8.requant import (  # _fma_acc: the engine's exact single-rounding fma
    BACKENDS,
    _fma_acc,
    output_range,
    q31_requantize,
    requant_multipliers,
    requantize,
)
from qcal.int8.saturation import pair_saturation_conv, pair_saturation_linear
from qcal.qparams import dequantize, qparams_from_range, qrange, quantize

__all__ = [
    "backend_reference_element",
    "channel_of",
    "channel_requant",
    "element_grid",
    "element_index",
    "pair_saturation",
    "requant_steps",
    "requant_table",
]

_I16_MAX = 32767
_ENGINE_LOCK = threading.Lock()  # torch's quantized engine is process-global state


def _requant(layer: Any, backend: str) -> Any:
    """The layer's Requant on ``backend``, with weight scales passed as the engine passes them."""
    sw = float(layer.weight_scale) if layer.weight_scale.numel() == 1 else layer.weight_scale
    return requant_multipliers(layer.input_scale, sw, layer.output_scale, layer.bias, backend=backend)


def _pick(t: torch.Tensor, c: int) -> torch.Tensor:
    """Channel ``c`` of a per-channel vector, or its single entry when per tensor."""
    t = t.reshape(-1)
    return t[c] if t.numel() > 1 else t[0]


@torch.no_grad()
def requant_table(layer: Any, backends: tuple[str, ...] = BACKENDS) -> pd.DataFrame:
    """Per output channel: the scales, ``requant_scale`` (float64) and each backend's numbers.

    Args:
        layer: a ``qcal.calibration.model.QuantLayer`` (input/weight/output scales and the float bias).
        backends: the flavours to list.

    Returns:
        Columns channel, input_scale, weight_scale, weight_zero_point, output_scale,
        requant_scale, then per
        backend ``<backend>_multiplier`` (float32, as that backend computes it), and
        q31_multiplier, q31_shift (gemmlowp/TFLite: ``m ~= q * 2^(shift-31)``).
    """
    n = int(layer.weight_q.shape[0])
    sw = layer.weight_scale.reshape(-1).double().expand(n)
    zw = layer.weight_zero_point.reshape(-1).long().expand(n)
    df = pd.DataFrame({
        "channel": range(n),
        "input_scale": float(layer.input_scale),
        "weight_scale": sw.numpy(),
        "weight_zero_point": zw.numpy(),
        "output_scale": float(layer.output_scale),
    })
    df["requant_scale"] = df["input_scale"] * df["weight_scale"] / df["output_scale"]
    for backend in backends:
        rq = _requant(layer, backend)
        df[f"{backend}_multiplier"] = rq.multiplier.double().expand(n).numpy() \
            if rq.multiplier.numel() == 1 else rq.multiplier.double().numpy()
        if backend == "q31":
            df["q31_multiplier"] = rq.q31_multiplier.expand(n).numpy() if rq.q31_multiplier.numel() == 1 \
                else rq.q31_multiplier.numpy()
            df["q31_shift"] = rq.q31_shift.expand(n).numpy() if rq.q31_shift.numel() == 1 \
                else rq.q31_shift.numpy()
    return df


@torch.no_grad()
def channel_requant(layer: Any, backend: str, channel: int) -> dict[str, Any]:
    """One output channel's requantization numbers on ``backend`` (``requant_multipliers``).

    Returns:
        multiplier (float32 value as a float), q31_multiplier, q31_shift, q31_error, and
        bias_int32 (None when the backend keeps a float bias or there is none).
    """
    rq = _requant(layer, backend)
    return {
        "multiplier": float(_pick(rq.multiplier, channel)),
        "q31_multiplier": int(_pick(rq.q31_multiplier, channel)),
        "q31_shift": int(_pick(rq.q31_shift, channel)),
        "q31_error": float(_pick(rq.q31_error, channel)),
        "bias_int32": None if rq.bias_int32 is None else int(_pick(rq.bias_int32, channel)),
    }


def element_grid(output_shape: tuple[int, ...], kind: str) -> tuple[int, int, int]:
    """(channels, rows, columns) to pick one output element from (batch excluded).

    conv (N, C, H, W): (C, H, W). linear (N, ..., O): (O, rows = product of the middle
    dims, e.g. tokens, 1).
    """
    if kind == "conv":
        return int(output_shape[1]), int(output_shape[2]), int(output_shape[3])
    middle = 1
    for d in output_shape[1:-1]:
        middle *= int(d)
    return int(output_shape[-1]), middle, 1


def element_index(output_shape: tuple[int, ...], kind: str, channel: int, row: int = 0,
                  col: int = 0, sample: int = 0) -> tuple[int, ...]:
    """The index of one output element: (n, c, h, w) for conv, (n, ..., c) for linear.

    Raises:
        ValueError: an index outside the output (the message gives the valid ranges).
    """
    channels, rows, cols = element_grid(output_shape, kind)
    if not (0 <= channel < channels and 0 <= row < rows and 0 <= col < cols
            and 0 <= sample < output_shape[0]):
        raise ValueError(f"element (sample {sample}, channel {channel}, row {row}, column {col}) is "
                         f"outside the output of shape {tuple(output_shape)}: channels 0..{channels - 1}, "
                         f"rows 0..{rows - 1}, columns 0..{cols - 1}")
    if kind == "conv":
        return (sample, channel, row, col)
    middle = tuple(int(i) for i in torch.unravel_index(torch.tensor(row), output_shape[1:-1])) \
        if len(output_shape) > 2 else ()
    return (sample, *middle, channel)


def channel_of(index: tuple[int, ...], kind: str) -> int:
    """The output channel of an element index (axis 1 for conv, the last axis for linear)."""
    return int(index[1] if kind == "conv" else index[-1])


@torch.no_grad()
def requant_steps(layer: Any, trace: Any, index: tuple[int, ...], backend: str) -> pd.DataFrame:
    """Every step from the int32 accumulator to the final 8-bit value of one element.

    Args:
        layer: the ``QuantLayer`` (scales, float bias, fused ReLU).
        trace: the layer's ``LayerTrace`` for the batch (its ``acc`` and ``output_q``).
        index: the element, from ``element_index``.
        backend: "fbgemm" | "qnnpack" | "onnx" | "q31".

    Returns:
        Columns step, formula, value (a string: integers exactly, floats with 9 significant
        digits). The last row is the output value; it equals ``qcal.int8.requantize`` of the
        same accumulator (and the traced ``output_q``).
    """
    c = channel_of(index, layer.kind)
    acc = int(trace.acc[index])
    zo, relu = int(layer.output_zero_point), bool(layer.relu)
    lo, hi = output_range(trace.output_q.dtype, zo, relu)
    rq = _requant(layer, backend)
    m = _pick(rq.multiplier, c)
    k = int(layer.weight_q[c].numel())
    steps: list[tuple[str, str, Any]] = [
        ("accumulator", f"acc = Σ_k (a_k − za)(w_k − zw), {k} products, exact int32", acc),
    ]
    f32 = torch.float32
    if backend in ("fbgemm", "qnnpack"):
        acc_f = torch.tensor(acc, dtype=f32)
        if backend == "fbgemm" and rq.bias_float is not None:
            ats, b = _pick(rq.act_times_w_scale, c), _pick(rq.bias_float, c)
            if rq.per_channel:
                bq = b / ats
                y = acc_f + bq
                steps += [("bias in accumulator units", "f32(b / f32(sa·sw))", bq.item()),
                          ("add bias (float)", "y = f32(acc + b/ats)", y.item())]
            else:
                rcp = (1.0 / ats.double()).float()
                y = _fma_acc(acc_f, b, rcp)  # the engine's exact single-rounding fma
                steps += [("bias reciprocal", "rcp = f32(1 / f32(sa·sw))", rcp.item()),
                          ("add bias (one fused multiply-add)", "y = fma(b, rcp, acc)", y.item())]
        elif backend == "qnnpack" and rq.bias_int32 is not None:
            bq = int(_pick(rq.bias_int32, c))
            y = torch.tensor(acc + bq, dtype=torch.float64).float()
            steps += [("bias quantized to int32", "bq = rint(b · f32(1 / f32(sw·sa)))", bq),
                      ("add bias (int32)", "acc + bq", acc + bq)]
        else:
            y = acc_f
        name = "M = f32(f32(sa·sw) / so)" if backend == "fbgemm" else "R = f32(f32(sw·sa) · f32(1/so))"
        t = (y * m).float()
        steps += [("requant multiplier", name, m.item()),
                  ("scale", "f32(y · M)", t.item())]
        r = int(torch.round(t))
        steps += [("round half to even", "rint(·)", r), ("add output zero point", f"+ zo ({zo})", r + zo)]
        v = r + zo
    elif backend == "onnx":
        b = 0 if rq.bias_int32 is None else int(_pick(rq.bias_int32, c))
        s = acc + b
        t = float(s) * float(m.double())
        steps += [("bias (int32, scale sa·sw)", "b_q", b), ("add bias", "acc + b_q", s),
                  ("requant multiplier", "M = f32(f32(sa·sw) / so)", m.item()),
                  ("scale in float64", "(acc + b_q) · M", t),
                  ("add output zero point first", f"+ zo ({zo})", t + zo)]
        v = int(torch.round(torch.tensor(t + zo, dtype=torch.float64)))
        steps.append(("round half to even", "rint(·)", v))
    elif backend == "q31":
        b = 0 if rq.bias_int32 is None else int(_pick(rq.bias_int32, c))
        q, shift = int(_pick(rq.q31_multiplier, c)), int(_pick(rq.q31_shift, c))
        x = torch.tensor([acc + b], dtype=torch.int64)
        ab = (acc + b) * 2 ** max(shift, 0) * q
        nudged = ab + (2**30 if ab >= 0 else 1 - 2**30)
        high = abs(nudged) // 2**31 * (1 if nudged >= 0 else -1)  # divide, truncating toward 0
        r = int(q31_requantize(x, torch.tensor([q]), torch.tensor([shift]))[0])
        steps += [("bias (int32)", "b_q", b), ("add bias", "x = acc + b_q", acc + b),
                  ("Q31 multiplier and shift", "m ≈ q · 2^(shift−31)", f"q = {q}, shift = {shift}"),
                  ("SaturatingRoundingDoublingHighMul", "(x·2^max(shift,0) · q + 2^30) >> 31", high),
                  ("RoundingDivideByPOT", f"round half away from zero of high / 2^{max(-shift, 0)}", r),
                  ("add output zero point", f"+ zo ({zo})", r + zo)]
        v = r + zo
    else:
        raise ValueError(f"unknown backend {backend!r}; expected one of: {', '.join(BACKENDS)}")
    out = min(max(v, lo), hi)
    steps.append(("clamp", f"clamp to [{lo}, {hi}]" + (" (fused ReLU: low end at zo)" if relu else ""), out))
    check = requantize(torch.tensor([[acc]], dtype=torch.int32), _channel_requant(rq, c), zo,
                       relu=relu, out_dtype=trace.output_q.dtype)
    assert int(check) == out, f"worked steps give {out}, qcal.int8.requantize gives {int(check)}"
    return pd.DataFrame([{"step": s, "formula": f, "value": _fmt(v)} for s, f, v in steps])


def _channel_requant(rq: Any, c: int) -> Any:
    """The Requant of channel ``c`` alone (vectors cut to one entry)."""
    def cut(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else _pick(t, c).reshape(1)

    return replace(rq, multiplier=cut(rq.multiplier), bias_int32=cut(rq.bias_int32),
                   q31_multiplier=cut(rq.q31_multiplier), q31_shift=cut(rq.q31_shift),
                   q31_error=cut(rq.q31_error), act_times_w_scale=cut(rq.act_times_w_scale),
                   bias_float=cut(rq.bias_float))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.9g}"
    return str(v)


@torch.no_grad()
def backend_reference_element(layer: Any, trace: Any, index: tuple[int, ...], backend: str) -> int | None:
    """The same element computed by torch's own quantized engine (an oracle for display).

    Returns None for flavours torch has no engine for ("onnx", "q31") or inputs it cannot
    take (int8 activations).
    """
    if backend not in ("fbgemm", "qnnpack") or trace.input_q.dtype != torch.uint8:
        return None
    x = torch._make_per_tensor_quantized_tensor(trace.input_q, float(layer.input_scale),
                                                int(layer.input_zero_point))
    w_scale, w_zp = layer.weight_scale.reshape(-1), layer.weight_zero_point.reshape(-1)
    if w_scale.numel() > 1 or layer.weight_qscheme.startswith("per_channel"):
        w = torch._make_per_channel_quantized_tensor(layer.weight_q, w_scale.double(), w_zp.long(), 0)
    else:
        w = torch._make_per_tensor_quantized_tensor(layer.weight_q, float(w_scale[0]), int(w_zp[0]))
    ops = torch.ops.quantized
    with _ENGINE_LOCK:
        previous = torch.backends.quantized.engine
        torch.backends.quantized.engine = backend
        try:  # prepack afresh each time: QNNPACK caches the output scale in its packed weights
            if layer.kind == "conv":
                packed = ops.conv2d_prepack(w, layer.bias, list(layer.stride), list(layer.padding),
                                            list(layer.dilation), int(layer.groups))
                run = ops.conv2d_relu if layer.relu else ops.conv2d
            else:
                packed = ops.linear_prepack(w, layer.bias)
                run = ops.linear_relu if layer.relu else ops.linear
            out = run(x, packed, float(layer.output_scale), int(layer.output_zero_point))
        finally:
            torch.backends.quantized.engine = previous
    return int(out.int_repr()[index])


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
    a_cal = _reduction_inputs(layer, codes, za, index)
    a_full = _reduction_inputs(layer, full, int(z_full), index)
    w = _weight_row(layer, channel_of(index, layer.kind))
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
    df["saturates_full_range"] = (df["sum_full_range"] > _I16_MAX) | (df["sum_full_range"] < -_I16_MAX - 1)
    # the worst any input could do: code 255 wherever the weights of a pair share a sign
    wp = w.reshape(-1, 2)
    df["worst_case_full_range"] = [
        255 * (hi if hi >= -lo else lo) for hi, lo in
        zip(wp.clamp(min=0).sum(1).tolist(), wp.clamp(max=0).sum(1).tolist(), strict=True)]
    df["can_saturate"] = (df["worst_case_full_range"] > _I16_MAX) | (df["worst_case_full_range"] < -_I16_MAX - 1)
    rows = _weight_rows(layer)
    if rows.shape[1] % 2:
        rows = F.pad(rows, (0, 1))
    rp = rows.reshape(rows.shape[0], -1, 2)
    risky = (255 * rp.clamp(min=0).sum(2) > _I16_MAX) | (255 * rp.clamp(max=0).sum(2) < -_I16_MAX - 1)
    if layer.kind == "conv":
        geometry = (layer.stride, layer.padding, layer.dilation, layer.groups)
        _, count_full = pair_saturation_conv(full, int(z_full), layer.weight_q, geometry)
        _, count_cal = pair_saturation_conv(codes, za, layer.weight_q, geometry)
    else:
        _, count_full = pair_saturation_linear(full, layer.weight_q)
        _, count_cal = pair_saturation_linear(codes, layer.weight_q)
    summary = {
        "max_code_calibrated": int(codes.max()) if codes.numel() else 0, "max_code_full_range": int(full.max()) if full.numel() else 0,
        "full_range_scale": float(s_full[0]), "full_range_zero_point": int(z_full[0]),
        "element_pairs": len(df), "element_saturated_full_range": int(df["saturates_full_range"].sum()),
        "layer_saturated_calibrated": int(count_cal), "layer_saturated_full_range": int(count_full),
        "layer_pairs": int(risky.numel()), "layer_pairs_can_saturate": int(risky.sum()),
        "element_pairs_can_saturate": int(df["can_saturate"].sum()),
    }
    return df, summary


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


def _weight_row(layer: Any, c: int) -> torch.Tensor:
    return _weight_rows(layer)[c]
