"""One element's requantization replayed step by step, one small function per backend.

``requant_steps`` looks the backend's steps up in ``_STEPS`` (fbgemm, qnnpack, onnx, q31, x86, ort, xnnpack), runs
them on the element's int32 accumulator, clamps, and checks the result against
``qcal.int8.requantize`` of the same accumulator: the table cannot drift from the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd
import torch

from qcal.int8.backends.onednn import onednn_steps, x86_uses_onednn
from qcal.int8.common.exact_f32 import fma_f32
from qcal.int8.common.requant import Requant, output_range, q31_requantize, requantize
from qcal.reporting.elements import channel_of, layer_requant, pick
from qcal.schemes import check_backend

__all__ = ["requant_beside", "requant_steps"]

Step = tuple[str, str, Any]  # (step, formula, value)


@dataclass(frozen=True)
class _Element:
    """What every backend's steps read: the accumulator, the channel and its Requant."""

    acc: int
    channel: int
    zo: int
    rq: Requant

    @property
    def multiplier(self) -> torch.Tensor:
        return pick(self.rq.multiplier, self.channel)

    def bias_int32(self) -> int:
        return 0 if self.rq.bias_int32 is None else int(pick(self.rq.bias_int32, self.channel))


def _fbgemm_bias(e: _Element) -> tuple[torch.Tensor, list[Step]]:
    """fbgemm keeps a float bias: added in float32 per channel, by one fma per tensor."""
    acc_f = torch.tensor(e.acc, dtype=torch.float32)
    if e.rq.bias_float is None:
        return acc_f, []
    ats, b = pick(e.rq.act_times_w_scale, e.channel), pick(e.rq.bias_float, e.channel)
    if e.rq.per_channel:
        bq = b / ats
        y = acc_f + bq
        return y, [("bias in accumulator units", "f32(b / f32(sa·sw))", bq.item()),
                   ("add bias (float)", "y = f32(acc + b/ats)", y.item())]
    rcp = (1.0 / ats.double()).float()
    y = fma_f32(acc_f, b, rcp)  # the engine's exact single-rounding fma
    return y, [("bias reciprocal", "rcp = f32(1 / f32(sa·sw))", rcp.item()),
               ("add bias (one fused multiply-add)", "y = fma(b, rcp, acc)", y.item())]


def _qnnpack_bias(e: _Element) -> tuple[torch.Tensor, list[Step]]:
    """qnnpack quantizes the bias to int32 and adds it to the accumulator."""
    if e.rq.bias_int32 is None:
        return torch.tensor(e.acc, dtype=torch.float32), []
    bq = e.bias_int32()
    y = torch.tensor(e.acc + bq, dtype=torch.float64).float()
    return y, [("bias quantized to int32", "bq = rint(b · f32(1 / f32(sw·sa)))", bq),
               ("add bias (int32)", "acc + bq", e.acc + bq)]


def _xnnpack_bias(e: _Element) -> tuple[torch.Tensor, list[Step]]:
    """xnnpack: ExecuTorch's delegate quantizes the float bias to int32 itself (per tensor from
    the float64 product of the scales), then XNNPACK adds it to the accumulator."""
    y, steps = _qnnpack_bias(e)
    if steps:
        rule = "bq = rint(b · f32(1 / f32(sw·sa)))" if e.rq.per_channel else "bq = rint(b · f32(1 / (sw·sa)))"
        steps[0] = ("bias quantized to int32 by the delegate", rule + ("" if e.rq.per_channel else ", sw·sa in float64"),
                    steps[0][2])
    return y, steps


_MULTIPLIER_FORMULA = {"fbgemm": "M = f32(f32(sa·sw) / so)", "qnnpack": "R = f32(f32(sw·sa) · f32(1/so))",
                       "xnnpack": "M = f32(f32(sa·sw) / so)"}


def _torch_steps(bias: Callable[[_Element], tuple[torch.Tensor, list[Step]]], backend: str
                 ) -> Callable[[_Element], tuple[int, list[Step]]]:
    """fbgemm and qnnpack: bias rule, float32 scale, rint, then the zero point after rounding."""

    def steps(e: _Element) -> tuple[int, list[Step]]:
        y, out = bias(e)
        t = (y * e.multiplier).float()
        r = int(torch.round(t))
        out += [("requant multiplier", _MULTIPLIER_FORMULA[backend], e.multiplier.item()),
                ("scale", "f32(y · M)", t.item()), ("round half to even", "rint(·)", r),
                ("add output zero point", f"+ zo ({e.zo})", r + e.zo)]
        return r + e.zo, out

    return steps


def _onnx_steps(e: _Element) -> tuple[int, list[Step]]:
    """onnx: int32 bias, float64 scale, the zero point added *before* rounding."""
    b = e.bias_int32()
    t = float(e.acc + b) * float(e.multiplier.double())
    v = int(torch.round(torch.tensor(t + e.zo, dtype=torch.float64)))
    return v, [("bias (int32, scale sa·sw)", "b_q", b), ("add bias", "acc + b_q", e.acc + b),
               ("requant multiplier", "M = f32(f32(sa·sw) / so)", e.multiplier.item()),
               ("scale in float64", "(acc + b_q) · M", t),
               ("add output zero point first", f"+ zo ({e.zo})", t + e.zo),
               ("round half to even", "rint(·)", v)]


def _onednn_steps(e: _Element) -> tuple[int, list[Step]]:
    """oneDNN (x86's convs with symmetric weights on AVX512-VNNI CPUs): zero point before rounding."""
    bias = None if e.rq.bias_float is None else pick(e.rq.bias_float, e.channel)
    return onednn_steps(e.acc, pick(e.rq.act_times_w_scale, e.channel), e.rq.dst_multiplier, bias, e.zo)


def _flavour(layer: Any, backend: str) -> str:
    """The requantization this layer really runs: x86 hands some convs to oneDNN on the assumed CPU."""
    if backend == "x86" and layer.kind == "conv" and x86_uses_onednn(layer.weight_zero_point, int(layer.groups)):
        return "onednn"
    return backend


def _ort_steps(e: _Element) -> tuple[int, list[Step]]:
    """ort (onnxruntime's MlasRequantizeOutput): int32 bias, float32 scale, clamp, rint, zp after."""
    b = e.bias_int32()
    y = torch.tensor(e.acc + b, dtype=torch.float64).float()  # _mm_cvtepi32_ps: one rounding
    t = (y * e.multiplier).float()
    r = int(torch.round(t))
    return r + e.zo, [("bias quantized to int32", "bq = rint(f32(b / f32(sa·sw)))", b),
                      ("add bias (int32), to float32", "y = f32(acc + bq)", y.item()),
                      ("requant multiplier", "M = f32(f32(sa·sw) / so)", e.multiplier.item()),
                      ("scale", "f32(y · M)", t.item()),
                      ("round half to even (after a float clamp)", "rint(·) (cvtps2dq)", r),
                      ("add output zero point", f"+ zo ({e.zo})", r + e.zo)]


def _q31_steps(e: _Element) -> tuple[int, list[Step]]:
    """q31: gemmlowp's fixed point; both roundings half away from zero."""
    b = e.bias_int32()
    q, shift = int(pick(e.rq.q31_multiplier, e.channel)), int(pick(e.rq.q31_shift, e.channel))
    ab = (e.acc + b) * 2 ** max(shift, 0) * q
    nudged = ab + (2**30 if ab >= 0 else 1 - 2**30)
    high = abs(nudged) // 2**31 * (1 if nudged >= 0 else -1)  # divide, truncating toward 0
    r = int(q31_requantize(torch.tensor([e.acc + b], dtype=torch.int64), torch.tensor([q]),
                           torch.tensor([shift]))[0])
    return r + e.zo, [
        ("bias (int32)", "b_q", b), ("add bias", "x = acc + b_q", e.acc + b),
        ("Q31 multiplier and shift", "m ≈ q · 2^(shift−31)", f"q = {q}, shift = {shift}"),
        ("SaturatingRoundingDoublingHighMul", "(x·2^max(shift,0) · q + 2^30) >> 31", high),
        ("RoundingDivideByPOT", f"round half away from zero of high / 2^{max(-shift, 0)}", r),
        ("add output zero point", f"+ zo ({e.zo})", r + e.zo)]


_STEPS: dict[str, Callable[[_Element], tuple[int, list[Step]]]] = {
    "fbgemm": _torch_steps(_fbgemm_bias, "fbgemm"),
    "qnnpack": _torch_steps(_qnnpack_bias, "qnnpack"),
    "onnx": _onnx_steps,
    "q31": _q31_steps,
    # torch's x86 engine: FBGEMM's numbers, or oneDNN's for the convs it hands over (_flavour)
    "x86": _torch_steps(_fbgemm_bias, "fbgemm"),
    "onednn": _onednn_steps,
    "ort": _ort_steps,
    "xnnpack": _torch_steps(_xnnpack_bias, "xnnpack"),  # f32(acc + bq) · M, rint, zero point after
}


@torch.no_grad()
def requant_steps(layer: Any, trace: Any, index: tuple[int, ...], backend: str) -> pd.DataFrame:
    """Every step from the int32 accumulator to the final 8-bit value of one element.

    Args:
        layer: the ``QuantLayer`` (scales, float bias, fused ReLU).
        trace: the layer's ``LayerTrace`` for the batch (its ``acc`` and ``output_q``).
        index: the element, from ``element_index``.
        backend: "fbgemm" | "qnnpack" | "onnx" | "q31" | "x86" (the steps of the kernel x86
            runs for this layer on the assumed CPU: FBGEMM's or oneDNN's) | "ort" | "xnnpack".

    Returns:
        Columns step, formula, value (a string: integers exactly, floats with 9 significant
        digits). The last row is the output value; it equals ``qcal.int8.requantize`` of the
        same accumulator (and the traced ``output_q``).
    """
    flavour = _flavour(layer, check_backend(backend))
    c = channel_of(index, layer.kind)
    e = _Element(int(trace.acc[index]), c, int(layer.output_zero_point), layer_requant(layer, flavour))
    relu = bool(layer.relu)
    lo, hi = output_range(trace.output_q.dtype, e.zo, relu)
    k = int(layer.weight_q[c].numel())
    v, steps = _STEPS[flavour](e)
    out = min(max(v, lo), hi)
    steps = [("accumulator", f"acc = Σ_k (a_k − za)(w_k − zw), {k} products, exact int32", e.acc), *steps,
             ("clamp", f"clamp to [{lo}, {hi}]" + (" (fused ReLU: low end at zo)" if relu else ""), out)]
    check = requantize(torch.tensor([[e.acc]], dtype=torch.int32), _channel_requant(e.rq, c), e.zo,
                       relu=relu, out_dtype=trace.output_q.dtype)
    assert int(check) == out, f"worked steps give {out}, qcal.int8.requantize gives {int(check)}"
    return pd.DataFrame([{"step": s, "formula": f, "value": _fmt(v)} for s, f, v in steps])


def requant_beside(layer: Any, trace: Any, index: tuple[int, ...],
                   backends: tuple[str, ...] = ("fbgemm", "qnnpack", "ort")) -> pd.DataFrame:
    """The element's accumulator requantized by each of ``backends``: backend, multiplier, output."""
    rows = []
    for backend in backends:
        steps = requant_steps(layer, trace, index, backend)
        multiplier = steps.loc[steps["step"] == "requant multiplier", "value"]
        rows.append({"backend": backend, "multiplier": multiplier.iloc[0] if len(multiplier) else "",
                     "output": steps["value"].iloc[-1]})
    return pd.DataFrame(rows)


def _channel_requant(rq: Any, c: int) -> Any:
    """The Requant of channel ``c`` alone (vectors cut to one entry)."""
    def cut(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else pick(t, c).reshape(1)

    return replace(rq, multiplier=cut(rq.multiplier), bias_int32=cut(rq.bias_int32),
                   q31_multiplier=cut(rq.q31_multiplier), q31_shift=cut(rq.q31_shift),
                   q31_error=cut(rq.q31_error), act_times_w_scale=cut(rq.act_times_w_scale),
                   bias_float=cut(rq.bias_float))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.9g}"
    return str(v)


