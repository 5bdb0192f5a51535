"""XNNPACK's signed-int8 arithmetic (qs8 / qc8w), as ExecuTorch's XNNPACK delegate runs it.

Read from XNNPACK (``src/operators/convolution-nhwc.c``, ``fully-connected-nc.c``,
``src/microparams-init.c``, the ``qs8-qc8w-gemm`` / ``qs8-qc8w-dwconv`` ``minmax-fp32``
microkernels and ``qs8-vadd``) and ExecuTorch's delegate (``backends/xnnpack/operators/
quant_params.py``, ``node_visitor.py``); checked bit for bit against the delegate on an
AVX-512-VNNI/AMX Xeon in tests/int8/test_int8_xnnpack.py. Notation as in ``requant.py``.

Convolution (dense, grouped, depthwise) and fully connected
    ``M_j = f32(f32(sa*sw_j)/so)`` (``input_scale * kernel_scale / output_scale`` in C float;
    XNNPACK refuses ``M_j >= 256``). The float bias of a PT2E model is quantized by the
    delegate before XNNPACK sees it (``QuantParams.from_bias``, then torch's
    ``quantize_per_channel`` / ``quantize_per_tensor``): per channel
    ``bq_j = rint(f32(b_j * f32(1/f32(sw_j*sa))))`` (qnnpack's rule); per tensor the scale is
    the float64 product ``sw*sa`` and ``bq = rint(f32(b * f32(1/(sw*sa))))``. The microkernels
    accumulate exactly in int32 (the VNNI kernels' +128 input offset is compensated in the packed
    bias), then ``y = f32(f32(acc + bq) * M_j)``, ``min(y, qmax - zo)``, ``_mm512_cvtps_epi32``
    (half to even), ``+ zo`` and a saturating narrowing, ``max(., qmin)``: in all
    ``out = clamp(rint(f32(f32(acc + bq) * M_j)) + zo, lo, hi)``, a value beyond int32 saturating
    high, never wrapping. A fused ReLU raises ``lo`` to the quantized 0, ``max(zo, -128)``.
    The qu8 operators (uint8 activations and weights with a zero point) use the same fp32
    requantization; ExecuTorch's delegate only builds qs8.
Weights
    the delegate's qs8/qc8w kernels have no weight zero point (XNNPACKQuantizer's weights are
    symmetric, in [-127, 127]); ``check_xnnpack_weights`` names that refusal. qcal's engine still
    computes a weight zero point exactly, as XNNPACK's qu8 kernels do.
Add (``xnn_init_qs8_add_minmax_scalar_params``, ``qs8-vadd``)
    ``ra = f32(sa/so)``, ``rb = f32(sb/so)``, ``shift = 20 - exponent(max(ra, rb))`` (in [12, 30],
    ratios in [2^-10, 2^8)); ``Ma = lrintf(ra * 2^shift)`` (half to even, exact scaling);
    ``acc = 2^(shift-1) - Ma*za - Mb*zb + Ma*a + Mb*b`` in int32, ``out = clamp((acc >> shift)
    + zo)`` (arithmetic shift: the rounding constant makes it round half up). Every x86 variant
    (SSE mul16, AVX2/AVX-512 mul32) computes the same exact products; ReLU clamps at ``zo``.
ARM
    The NEON kernels use the same fp32 requantization (``vcvtnq_s32_f32``, half to even) or the
    "fmagic" float trick with the same result within the clamp range: modelled from the source,
    unverified on ARM hardware.
"""

from __future__ import annotations

import torch

__all__ = ["add_multipliers", "check_xnnpack_multiplier", "check_xnnpack_weights", "xnnpack_add", "xnnpack_bias"]


def xnnpack_bias(bias: torch.Tensor, sa: torch.Tensor, sw: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """The int32 bias ExecuTorch's delegate hands XNNPACK for a float32 ``bias`` (see the module doc).

    Args:
        bias: float32 (O,); sa: float32 one-element input scale; sw: float32 weight scales
            ((O,) per channel, else one entry); per_channel: the weights' granularity.
    """
    if per_channel:
        inv = 1.0 / (sw * sa)  # float32 tensors: f32(1 / f32(sw_j * sa))
    else:  # python floats: the float64 product, its float64 reciprocal, rounded to float32
        inv = torch.tensor(1.0 / (float(sw.reshape(-1)[0]) * float(sa.reshape(-1)[0])), dtype=torch.float32)
    return torch.round(bias * inv).clamp(-(2**31), 2**31 - 1).to(torch.int32)


def check_xnnpack_multiplier(multiplier: torch.Tensor) -> None:
    """ValueError for a requantization scale XNNPACK refuses (``>= 256``, convolution-nhwc.c)."""
    bad = multiplier >= 256.0
    if bool(bad.any()):
        raise ValueError(
            f"backend 'xnnpack' refuses requantization scale {multiplier[bad].tolist()[:4]} "
            "(x_scale * w_scale / out_scale in float32): XNNPACK needs it below 256.0")


def check_xnnpack_weights(w_q: torch.Tensor, zero_points: torch.Tensor) -> None:
    """ValueError for int8 weights with a zero point (XNNPACK's qs8/qc8w kernels have none)."""
    if w_q.dtype == torch.int8 and bool((zero_points != 0).any()):
        raise ValueError(
            f"backend 'xnnpack' takes symmetric int8 weights (zero point 0), got zero points "
            f"{zero_points.unique().tolist()[:4]}: its qs8/qc8w kernels have no weight zero point")


def add_multipliers(ra: float, rb: float) -> tuple[int, int, int]:
    """(Ma, Mb, shift) of ``xnn_init_qs8_add_minmax_scalar_params``."""
    for r in (ra, rb):
        if not 2.0**-10 <= r < 2.0**8:
            raise ValueError(f"XNNPACK's add needs input/output scale ratios in [2^-10, 2^8), got {r:.7g}")
    exponent = int(torch.frexp(torch.tensor(max(ra, rb), dtype=torch.float32))[1]) - 1
    shift = 20 - exponent
    # lrintf of the float with its exponent raised by shift: exact scaling, then half to even
    ma, mb = (int(torch.round(torch.tensor(r * 2.0**shift, dtype=torch.float64))) for r in (ra, rb))
    return ma, mb, shift


def xnnpack_add(ta: torch.Tensor, za: int, sa: torch.Tensor, tb: torch.Tensor, zb: int, sb: torch.Tensor,
                so: torch.Tensor, zo: int, relu: bool, lo: int, hi: int) -> torch.Tensor:
    """XNNPACK's qs8 add of code tensors ``ta``, ``tb`` (float32 scales; see the module doc)."""
    ra, rb = float(sa / so), float(sb / so)  # f32 divisions, as the C code's floats
    ma, mb, shift = add_multipliers(ra, rb)
    bias = (1 << (shift - 1)) - ma * za - mb * zb
    acc = bias + ma * ta.to(torch.int64) + mb * tb.to(torch.int64)  # fits int32 for int8 codes
    return ((acc >> shift) + zo).clamp(lo, hi)
