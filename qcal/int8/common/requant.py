"""Requantization: int32 accumulator -> 8-bit output, in each backend's own arithmetic.

Notation: ``sa, sw_j, so`` input, weight (channel j) and output scales; ``zo`` the output
zero point; ``acc`` the exact int32 accumulator ``sum_k (a_k - za)(w_jk - zw_j)``;
``f32(.)`` rounds to float32, ``rint`` rounds half to even.

==========  =====================================================================================
fbgemm      ``ats_j = f32(sa*sw_j)``, ``M_j = f32(ats_j/so)``; float bias stays float:
            per channel ``y = f32(f32(acc) + f32(b_j/ats_j))``, per tensor
            ``y = fma(b_j, f32(1/ats), f32(acc))`` (one rounding after the conversion, which
            rounds accumulators above 2^24), no bias ``y = f32(acc)``;
            ``out = clamp(rint(f32(y*M_j)) + zo, relu ? zo : qmin, qmax)`` (zp after rounding).
qnnpack     ``bq_j = rint(f32(b_j * f32(1/f32(sw_j*sa))))`` (torch's quantize to qint32),
            ``R_j = f32(f32(sw_j*sa) * f32(1/so))``,
            ``out = clamp(rint(f32(f32(acc + bq_j) * R_j)) + zo, ...)``.
onnx        ``M = f32(f32(sa*sw_j)/so)`` as numpy float32 arrays (QLinearConv/QLinearMatMul
            reference), then in float64: ``out = clip(rint(f64(acc + b_j) * M + zo))``: the zero
            point is added *before* rounding. A float bias is quantized as onnxruntime's
            quantizer does it: ``rint(f32(b_j / f32(sa*sw_j)))``.
x86         torch's x86 engine: FBGEMM's numbers (``Requant.backend`` says "fbgemm"), except for
            the convolutions it hands to oneDNN (``onednn.py``: AVX512-VNNI CPUs, symmetric
            weights, groups <= 100), whose flavour is "onednn": ``S_j = f32(f32(1/f32(1/sa))
            * sw_j)``, ``d = f32(1/f32(1/f32(1/so)))``, ``out = clamp(rint(f32(f32(f32(acc*S_j)
            + b_j) * d) + zo))``: float bias after scaling, zero point *before* rounding.
q31         gemmlowp / TFLite fixed point: ``M = sa*sw_j/so`` in float64 becomes
            ``q * 2^(shift-31)`` with ``q`` in [2^30, 2^31); ``out = clamp(
            RoundingDivideByPOT(SaturatingRoundingDoublingHighMul((acc + b_j) << max(shift,0),
            q), max(-shift,0)) + zo)``; bias quantized as for onnx.
ort         onnxruntime's MLAS (``qcal.int8.backends.ort``): ``M = f32(f32(sa*sw_j)/so)``, bias as for
            onnx, ``out = clamp(rint(f32(f32(acc + b_j) * M)), -zo, 255-zo) + zo`` (zp after).
xnnpack     XNNPACK's qs8/qc8w (``qcal.int8.backends.xnnpack``): ``M = f32(f32(sa*sw_j)/so)``
            (refused from 256), bias as ExecuTorch's delegate quantizes it (qnnpack's rule per
            channel), ``out = clamp(rint(f32(f32(acc + b_j) * M)) + zo)``, saturating high.
==========  =====================================================================================

Worked number (fbgemm): sa=0.5, sw=0.25, so=1.0 gives M=0.125; acc=20 -> y*M=2.5 -> rint 2
-> +zo(3) = 5. The same under onnx: 2.5 + 3 = 5.5 -> rint 6.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from qcal.int8.backends.onednn import onednn_scales, requantize_onednn
from qcal.int8.backends.xnnpack import check_xnnpack_multiplier, xnnpack_bias
from qcal.int8.common.exact_f32 import fma_f32, sum_f32
from qcal.int8.common.q31 import q31_requantize, quantize_multiplier
from qcal.int8.native import Epilogue, padded32
from qcal.schemes import BACKENDS, Backend, check_backend  # re-exported: qcal.int8.BACKENDS

__all__ = [
    "BACKENDS",
    "Backend",
    "Requant",
    "fused_epilogue",
    "output_range",
    "requant_multipliers",
    "requantize",
]

#: What ``requant_multipliers`` accepts: the backends plus oneDNN, which x86 dispatches to.
FLAVOURS: tuple[str, ...] = (*BACKENDS, "onednn")
_SLICE = 1 << 22  # accumulator elements requantized per step (16 MB of float32: fits L3)


@dataclass(frozen=True, eq=False)
class Requant:
    """The numbers a backend uses to turn one layer's int32 accumulator into 8-bit outputs.

    Attributes:
        backend: the flavour these numbers follow.
        multiplier: float32 (O,) (one entry when per tensor without bias), exactly as the
            backend computes it (fbgemm ``M_j``, qnnpack ``R_j``, onnx float32 ``M``, q31: the
            float32 of the real multiplier it approximates).
        bias_int32: int32 (O,) bias in accumulator units (qnnpack, onnx, q31) or None (fbgemm
            keeps a float bias; no bias).
        q31_multiplier: int64 (O,) gemmlowp ``q`` in [2^30, 2^31) (0 for a zero multiplier).
        q31_shift: int64 (O,) TFLite convention: positive shifts left, negative right.
        q31_error: float64 (O,) relative error ``(q * 2^(shift-31) - m) / m`` against the
            multiplier ``m`` it encodes.
        act_times_w_scale: float32 (O,) ``f32(sa*sw_j)``, the bias scale.
        bias_float: float32 (O,) the float bias fbgemm adds, or None.
        per_channel: whether the weight scales were per output channel.
    """

    backend: str
    multiplier: torch.Tensor
    bias_int32: torch.Tensor | None
    q31_multiplier: torch.Tensor
    q31_shift: torch.Tensor
    q31_error: torch.Tensor
    act_times_w_scale: torch.Tensor
    bias_float: torch.Tensor | None
    per_channel: bool
    dst_multiplier: torch.Tensor | None = None  # onednn: ``d``, the float32 it multiplies by 1/so


def _f32_vector(v: torch.Tensor | float, name: str) -> torch.Tensor:
    t = torch.as_tensor(v)
    if t.is_floating_point() or t.dtype in (torch.int32, torch.int64):
        t = t.to(torch.float32).reshape(-1)  # torch hands scales to its kernels as float32
    else:
        raise TypeError(f"{name} must be a number or a float tensor, got dtype {t.dtype}")
    if not torch.all(torch.isfinite(t) & (t > 0)):
        raise ValueError(f"{name} must be finite and positive, got {t.tolist()[:8]}")
    return t


def _check_requant_scale(scale: torch.Tensor, backend: str) -> None:
    # torch's qnnpack ops refuse a float32 requantization scale that is not a normal
    # positive number (generate_requantization_scales). fbgemm answers an infinite one, but
    # with codes that follow no rule (acc * inf, 0 * inf = NaN): qcal refuses it everywhere
    bad = ~torch.isfinite(scale)
    if backend == "qnnpack":
        bad |= scale < torch.finfo(torch.float32).tiny
    if bool(bad.any()):
        raise ValueError(
            f"backend {backend!r} refuses requantization scale {scale[bad].tolist()[:4]} "
            "(x_scale * w_scale / out_scale in float32): requantization scale must be finite "
            "and positive" + (" (a normal float32)" if backend == "qnnpack" else "")
        )


@torch.no_grad()
def requant_multipliers(
    x_scale: float | torch.Tensor,
    w_scale: float | torch.Tensor,
    out_scale: float | torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    backend: Backend,
) -> Requant:
    """Per-channel requantization numbers exactly as ``backend`` computes them (see module doc).

    Args:
        x_scale, out_scale: the input and output scales (numbers or one-element tensors).
        w_scale: a number / 0-d tensor (per tensor) or a 1-D tensor (per output channel, even
            with one entry; float64 as torch stores them is accepted).
        bias: float32 (O,) bias, int32 (O,) bias already in accumulator units, or None.
        backend: "fbgemm" | "qnnpack" | "onnx" | "q31" | "x86" (FBGEMM's numbers) | "onednn".
    Returns:
        A frozen ``Requant``; vectors have O entries (1 when per tensor and no bias).

    Example:
        >>> requant_multipliers(0.5, 0.25, 1.0, backend="fbgemm").multiplier
        tensor([0.1250])
    """
    if backend != "onednn":  # oneDNN is reached through x86's dispatch, not a backend of its own
        check_backend(backend)
    backend = "fbgemm" if backend == "x86" else backend  # x86's own layers run FBGEMM
    per_channel = torch.as_tensor(w_scale).dim() == 1
    sa = _f32_vector(x_scale, "x_scale")
    sw = _f32_vector(w_scale, "w_scale")
    so = _f32_vector(out_scale, "out_scale")
    if sa.numel() != 1 or so.numel() != 1:
        raise ValueError(f"x_scale and out_scale must be single numbers, got {sa.numel()} and {so.numel()}")
    bias, sw = _checked_bias(bias, sw, per_channel)
    _check_requant_scale(sa * sw / so, backend)
    if backend == "xnnpack" and bias is not None and bias.dtype == torch.float32:
        bias = xnnpack_bias(bias, sa, sw, per_channel)  # ExecuTorch quantizes the bias itself
    ats, mult, dst = _multiplier(backend, sa, sw, so)
    if backend == "xnnpack":
        check_xnnpack_multiplier(mult)
    bias_int32, bias_float = _bias_rule(bias, backend, ats)
    # q31 encodes TFLite's double multiplier; the others show their own float32 one in Q31
    real = sa.double() * sw.double() / so.double() if backend == "q31" else mult.double()
    q, shift, err = quantize_multiplier(real)
    return Requant(backend, mult, bias_int32, q, shift, err, ats, bias_float, per_channel, dst)


def _checked_bias(bias: torch.Tensor | None, sw: torch.Tensor, per_channel: bool
                  ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The bias as a float32 or int32 vector, and the weight scales expanded to its length."""
    if bias is None:
        return None, sw
    bias = torch.as_tensor(bias).reshape(-1)
    if bias.dtype not in (torch.float32, torch.float64, torch.int32):
        raise TypeError(f"bias must be float32 or int32, got {bias.dtype}")
    if bias.dtype == torch.float64:
        bias = bias.float()
    if per_channel and bias.numel() != sw.numel():
        raise ValueError(f"bias has {bias.numel()} entries but w_scale has {sw.numel()}")
    return bias, (sw.expand(bias.numel()).clone() if sw.numel() == 1 else sw)


# the float32 multiplier from ats = f32(sa * sw_j) and so, per backend
_MULTIPLIERS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "fbgemm": lambda ats, so: ats / so,
    "qnnpack": lambda ats, so: ats * (1.0 / so),  # torch multiplies by the float32 reciprocal of so
    "onnx": lambda ats, so: ats / so,  # numpy float32 arrays
    "q31": lambda ats, so: ats / so,  # the float32 it approximates (shown beside its Q31 form)
    "ort": lambda ats, so: ats / so,  # MLAS: f32(f32(sa * sw) / so)
    "xnnpack": lambda ats, so: ats / so,  # input_scale * kernel_scale / output_scale in C float
}


def _multiplier(backend: str, sa: torch.Tensor, sw: torch.Tensor, so: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(ats, multiplier, oneDNN's dst multiplier or None) as ``backend`` computes them."""
    if backend == "onednn":
        ats, dst = onednn_scales(float(sa), sw, float(so))
        return ats, ats * dst, dst
    ats = sa * sw  # f32(sa * sw_j): every backend forms this product in float32
    return ats, _MULTIPLIERS[backend](ats, so), None


def _bias_rule(bias: torch.Tensor | None, backend: str, ats: torch.Tensor
               ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(bias_int32, bias_float): an int32 bias as is; fbgemm/oneDNN keep a float bias; qnnpack
    rounds b * f32(1/ats), onnx and q31 b / ats, to int32."""
    if bias is None:
        return None, None
    if bias.dtype == torch.int32:
        return bias, None
    if backend in ("fbgemm", "onednn"):
        return None, bias
    scaled = bias * (1.0 / ats) if backend == "qnnpack" else bias / ats
    return torch.round(scaled).clamp(-(2**31), 2**31 - 1).to(torch.int32), None


def output_range(out_dtype: torch.dtype, zero_point: int, relu: bool) -> tuple[int, int]:
    """(lo, hi) clamp bounds: the dtype's range, the lower one raised to ``zero_point`` by ReLU."""
    info = torch.iinfo(out_dtype)
    lo, hi = info.min, info.max
    if not lo <= zero_point <= hi:
        raise ValueError(f"out_zero_point {zero_point} outside the {out_dtype} range [{lo}, {hi}]")
    return (max(lo, zero_point) if relu else lo), hi


def _fbgemm_bias_terms(rq: Requant) -> torch.Tensor:
    """fbgemm's float-bias operand: per channel ``f32(b_j / ats_j)`` (``_mm256_div_ps``, then
    added), per tensor the reciprocal ``f32(1 / ats)`` (``_mm256_set1_ps(1.0 / ats)``, fused
    into an fma with ``b``). Shared by the two-pass engine and the native fused store."""
    if rq.per_channel:
        return rq.bias_float / rq.act_times_w_scale
    return (1.0 / rq.act_times_w_scale.double()).float()


def _fbgemm(acc, rq, view, bound, consume=False):
    m = view(rq.multiplier)
    if rq.bias_float is not None and rq.per_channel:
        y = acc.float() + view(_fbgemm_bias_terms(rq))
    elif rq.bias_float is not None:
        rcp = _fbgemm_bias_terms(rq)
        # mul+add contracted to one fma, on _mm256_cvtepi32_ps(acc): rounded above 2^24
        y = fma_f32(acc if acc.dtype == torch.float32 else acc.float(), view(rq.bias_float), view(rcp))
    elif rq.bias_int32 is not None:
        y = sum_f32(acc, view(rq.bias_int32), bound)
    else:
        return torch.round_(_scaled(acc, m, consume))
    return torch.round_(y.mul_(m))


def _scaled(acc, m, consume):
    """f32(acc * m), overwriting ``acc`` when the caller hands it over."""
    if consume and acc.dtype == torch.float32:
        return acc.mul_(m)
    return acc.float() * m


def _qnnpack(acc, rq, view, bound, consume=False):
    m = view(rq.multiplier)
    if rq.bias_int32 is None:
        return torch.round_(_scaled(acc, m, consume))
    return torch.round_(sum_f32(acc, view(rq.bias_int32), bound).mul_(m))


def _onnx(acc, rq, view, bound, zo):
    y = acc.to(torch.float64, copy=True) if rq.bias_int32 is None else acc.double() + view(rq.bias_int32).double()
    return torch.round_(y.mul_(view(rq.multiplier.double())).add_(zo)) - zo


def _onednn(acc, rq, view, bound, zo):
    bias = rq.bias_float if rq.bias_float is not None else rq.bias_int32
    return requantize_onednn(acc, view(rq.act_times_w_scale), rq.dst_multiplier, None if bias is None else view(bias), zo)


def _q31(acc, rq, view, bound, consume=False):
    x = acc.to(torch.int64) if rq.bias_int32 is None else acc.to(torch.int64) + view(rq.bias_int32).to(torch.int64)
    return q31_requantize(x, view(rq.q31_multiplier), view(rq.q31_shift))


def _may_overflow(rq: Requant, bound: float) -> bool:
    """Whether ``|y * M|`` could reach 2^31 (then the float->int32 conversion overflows)."""
    bias = 0.0
    if rq.bias_float is not None:
        bias = float((rq.bias_float / rq.act_times_w_scale).abs().max())
    elif rq.bias_int32 is not None:
        bias = float(rq.bias_int32.abs().max())
    return (bound + bias) * float(rq.multiplier.max()) * (1 + 2**-20) >= 2**31


# MLAS (ort) rounds like qnnpack: f32(acc + b) times the float32 multiplier, zp after rounding
_FLAVOURS: dict[str, Callable] = {"fbgemm": _fbgemm, "qnnpack": _qnnpack, "q31": _q31, "ort": _qnnpack,
                                  "xnnpack": _qnnpack}  # XNNPACK: f32(acc + bq) * M too
_ZP_BEFORE: dict[str, Callable] = {"onnx": _onnx, "onednn": _onednn}  # take the zero point


@torch.no_grad()
def requantize(
    acc: torch.Tensor,
    rq: Requant,
    out_zero_point: int,
    *,
    relu: bool = False,
    out_dtype: torch.dtype = torch.uint8,
    channel_axis: int = 1,
    bound: float | None = None,
    consume: bool = False,
) -> torch.Tensor:
    """The backend's requantization of an exact accumulator (see the module doc for formulas).

    Args:
        acc: the accumulator, (N, O, ...) or (..., O): float32 holding exact integers, or an
            int32/int64/float64 tensor. Not modified unless ``consume``.
        rq: ``requant_multipliers(...)`` for the same layer.
        out_zero_point: ``zo``.
        relu: fused ReLU: clamp below at ``zo``.
        out_dtype: torch.uint8 or torch.int8.
        channel_axis: where the output channel sits in ``acc``.
        bound: a known bound on ``|acc|`` (skips a float64 detour when the sum fits float32).
        consume: the caller hands ``acc`` over; it may be overwritten (saves a pass).
    Returns:
        ``out_dtype`` tensor shaped like ``acc``.
    """
    lo, hi = output_range(out_dtype, out_zero_point, relu)
    axis = channel_axis % acc.dim()
    shape = [1] * acc.dim()

    def view(v: torch.Tensor) -> torch.Tensor:
        if v.numel() == 1:
            return v.reshape([1] * acc.dim())
        shape[axis] = -1
        return v.reshape(shape)

    if bound is None:
        bound = float(acc.abs().max()) if acc.numel() else 0.0
    overflow = rq.backend in ("fbgemm", "qnnpack") and _may_overflow(rq, bound)
    out = torch.empty_like(acc, dtype=out_dtype)  # keeps channels_last
    # Slices along the batch keep the five elementwise passes in cache (same numbers).
    step = acc.shape[0] if acc.dim() < 2 or axis == 0 else max(1, _SLICE // max(1, acc[0].numel()))
    for i in range(0, max(acc.shape[0], 1), step):
        a = acc[i:i + step]
        if rq.backend in _ZP_BEFORE:
            v = _ZP_BEFORE[rq.backend](a, rq, view, bound, out_zero_point)
        else:
            v = _FLAVOURS[rq.backend](a, rq, view, bound, consume)
        if overflow and float(v.max()) >= 2**31:
            # _mm256_cvtps_epi32 returns INT_MIN beyond int32: the output saturates at the bottom
            v = v.masked_fill_(v >= 2**31, -float("inf"))
        # zp added after rounding, clamp to the output range (ReLU: at zo); [lo-zo, hi-zo]
        # first keeps every value exact in float32
        out[i:i + step].copy_(v.clamp_(lo - out_zero_point, hi - out_zero_point).add_(out_zero_point))
    return out


def fused_epilogue(rq: Requant, out_zero_point: int, relu: bool, out_dtype: torch.dtype,
                   out_channels: int) -> Epilogue | None:
    """This requantization as the native kernel's fused store (``native.py``), or None where that
    store cannot reproduce it (flavours other than fbgemm/qnnpack/ort, a per-tensor bias scale
    that is not one number). The result holds for accumulators up to its ``max_bound``: an int32
    bias needs its sum with the accumulator inside int32.
    """
    if rq.backend not in ("fbgemm", "qnnpack", "ort", "xnnpack"):
        return None
    lo, hi = output_range(out_dtype, out_zero_point, relu)
    fb, ib, rcp, mode, max_bound = None, None, 0.0, 0, float("inf")
    if rq.backend == "fbgemm" and rq.bias_float is not None:
        if rq.per_channel:
            fb, mode = _fbgemm_bias_terms(rq), 1
        else:
            rcps = _fbgemm_bias_terms(rq)
            if bool((rcps != rcps[0]).any()):
                return None
            fb, rcp, mode = rq.bias_float, float(rcps[0]), 2
    elif rq.bias_int32 is not None:
        ib, mode, max_bound = rq.bias_int32, 3, 2.0**31 - 1 - float(rq.bias_int32.abs().max())
    elif rq.bias_float is not None:
        return None

    def vector(v: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
        # one entry per output channel, zero-padded: the kernels read whole blocks of 32
        return None if v is None else padded32(v.to(dtype).reshape(-1).expand(out_channels))

    return Epilogue(vector(rq.multiplier, torch.float32), mode, vector(fb, torch.float32), vector(ib, torch.int32),
                    rcp, int(out_zero_point), lo, hi, out_dtype, rq.backend not in ("ort", "xnnpack"),
                    max_bound)
