"""Quantization primitives: ranges -> (scale, zero_point), quantize and dequantize.

Everything here works on plain tensors (float32 values, integer codes in uint8/int8) and
reproduces torch's arithmetic to the bit:

* ``qparams_from_range`` is ``torch.ao.quantization``'s ``_calculate_qparams`` (float32 math,
  the range widened to include 0, ``eps`` as the smallest scale).
* ``quantize`` is ``torch.quantize_per_tensor`` / ``quantize_per_channel``:
  ``q = clamp(rint(x * (1/scale) + zp), qmin, qmax)`` with the multiply-add fused (docs/requant.md, "Input quantization").
* ``dequantize`` is ``(q - zp) * scale`` in float32.
* ``quantize(..., backend="onnx")`` is ONNX's QuantizeLinear instead:
  ``saturate(rint(f32(x / scale)) + zp)``, a true float32 division, not torch's reciprocal.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from qcal.schemes import (  # schemes imports nothing from qcal: the one backend and range validators
    DTYPE_RANGES,
    check_backend,
    code_range,
)

__all__ = [
    "EPS",
    "INT_DTYPES",
    "QRANGES",
    "dequantize",
    "dequantizer",
    "qparams_from_range",
    "qrange",
    "quantize",
]

#: The integer range of each 8-bit dtype; reduce_range halves it.
QRANGES: dict[str, tuple[int, int]] = DTYPE_RANGES
#: The plain integer tensor dtype that holds each quantized dtype's codes.
INT_DTYPES: dict[str, torch.dtype] = {"quint8": torch.uint8, "qint8": torch.int8}
#: torch's smallest scale, ``finfo(float32).eps``.
EPS = torch.finfo(torch.float32).eps
# quantize's conventions: torch's (its engines') and ONNX QuantizeLinear's


def qrange(dtype: str, reduce_range: bool = False, quant_min: int | None = None,
           quant_max: int | None = None) -> tuple[int, int]:
    """(qmin, qmax) for ``dtype``, halved by ``reduce_range`` as torch does; a given
    ``quant_min``/``quant_max`` replaces the dtype's range (``qcal.schemes.code_range``).

    Example:
        >>> qrange("quint8", reduce_range=True)
        (0, 127)
    """
    if dtype not in QRANGES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of: {', '.join(QRANGES)}")
    return code_range(dtype, reduce_range, quant_min, quant_max)


@torch.no_grad()
def qparams_from_range(
    min_val: torch.Tensor | float,
    max_val: torch.Tensor | float,
    *,
    dtype: str = "quint8",
    symmetric: bool = False,
    reduce_range: bool = False,
    quant_min: int | None = None,
    quant_max: int | None = None,
    eps: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point for an observed range, exactly as torch's observers compute them.

    Affine: ``scale = (max(max,0) - min(min,0)) / (qmax - qmin)``,
    ``zp = clamp(qmin - rint(min(min,0) / scale), qmin, qmax)``.
    Symmetric: ``scale = max(|min|, |max|) / ((qmax - qmin) / 2)``, zp 0 (qint8) or 128
    (quint8, even with reduce_range, as torch does; with quant_min/quant_max given, torch's
    ``(qmin + qmax) // 2``). Scales never fall below ``eps`` (torch's observer argument; None:
    ``EPS``, torch's default; XNNPACKQuantizer's observers take 2**-12).
    A range never observed (min=+inf, max=-inf) gives (1.0, 0), like torch.

    Example: min -1.0, max 3.0, quint8 affine -> scale 4/255 = 0.015686, zp 64.

    Args:
        min_val, max_val: scalars or 1-D tensors (one entry per channel).
        quant_min, quant_max: the codes' range instead of the dtype's (``qrange``).
    Returns:
        (scale float32, zero_point int64), each 1-D with one entry per channel (1 per tensor).
    """
    min_val = torch.as_tensor(min_val, dtype=torch.float32).reshape(-1)
    max_val = torch.as_tensor(max_val, dtype=torch.float32).reshape(-1)
    if min_val.numel() == 1 and min_val.item() == float("inf") and max_val.item() == float("-inf"):
        return torch.tensor([1.0]), torch.tensor([0], dtype=torch.int64)
    if torch.any(min_val > max_val):
        raise ValueError(f"min {min_val.tolist()} exceeds max {max_val.tolist()}")
    qmin, qmax = qrange(dtype, reduce_range, quant_min, quant_max)
    eps = torch.tensor([EPS if eps is None else eps], dtype=torch.float32)
    min_neg = torch.min(min_val, torch.zeros_like(min_val))
    max_pos = torch.max(max_val, torch.zeros_like(max_val))
    if symmetric:
        # The same float32 ops as torch's _calculate_qparams, so the bits agree.
        absmax = torch.max(-min_neg, max_pos)
        scale = torch.max(absmax / (float(qmax - qmin) / 2), eps)
        mid = ((qmin + qmax) // 2 if quant_min is not None else 128) if dtype == "quint8" else 0
        zp = torch.full_like(min_val, mid, dtype=torch.int64)
    else:
        scale = torch.max((max_pos - min_neg) / float(qmax - qmin), eps)
        zp = qmin - torch.round(min_neg / scale).to(torch.int)
        zp = torch.clamp(zp, qmin, qmax).to(torch.int64)
    return scale, zp


def _fma_f32(x: torch.Tensor, m: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """float32 ``fma(x, m, a)``: ``x * m + a`` rounded once, as the vectorised CPU kernels do.

    The product of two float32 values is exact in float64; the sum is then formed with
    TwoSum so that the one case where rounding twice differs from rounding once (the float64
    sum lands exactly on a float32 midpoint) is resolved by the sign of the lost error.
    """
    p = x.double() * m.double()  # exact: 24 + 24 bits fit in 53
    a = a.double().expand_as(p)
    s = p + a
    bb = s - p
    err = (p - (s - bb)) + (a - bb)  # s + err == p + a exactly
    r = s.float()
    toward = torch.where(s > r.double(), torch.full_like(r, float("inf")), torch.full_like(r, -float("inf")))
    neighbour = torch.nextafter(r, toward)
    midpoint = (r.double() + neighbour.double()) / 2
    on_tie = (s == midpoint) & (err != 0) & (s != r.double())
    # On a tie created by the float64 rounding, the exact value lies on err's side of it.
    up = torch.max(r, neighbour)
    down = torch.min(r, neighbour)
    fixed = torch.where(err > 0, up, down)
    return torch.where(on_tie, fixed, r)


@torch.no_grad()
def quantize(
    x: torch.Tensor,
    scale: torch.Tensor | float,
    zero_point: torch.Tensor | int,
    dtype: str = "quint8",
    *,
    axis: int | None = None,
    backend: str = "fbgemm",
    quant_min: int | None = None,
    quant_max: int | None = None,
) -> torch.Tensor:
    """Quantize float values to integer codes, bit for bit as torch (or ONNX) does.

    ``q = clamp(rint(fma(x, f32(1 / f32(scale)), zp)), qmin, qmax)``: multiply by the float32
    reciprocal, add the zero point, round half to even once, clamp (docs/requant.md). Per
    channel the multiply-add is not fused: ``rint(f32(f32(x * inv) + zp))``.

    Args:
        x: float tensor of any shape.
        scale, zero_point: scalars, or 1-D tensors along ``axis`` for per-channel.
        dtype: "quint8" (returns uint8 codes) or "qint8" (int8 codes).
        axis: the channel axis for per-channel quantization; None for per tensor.
        backend: "fbgemm", "qnnpack", "x86", "q31": torch's quantize_per_tensor/_per_channel (the torch
            engines quantize inputs with it); "xnnpack": XNNPACK's convert, ``rint(f32(x * inv)) + zp``;
            "onnx": QuantizeLinear, ``saturate(rint(f32(x / scale)) + zp)`` (division, half to even, zp).
        quant_min, quant_max: clamp the codes to this range instead of the dtype's (the
            weights of a spec that gives one; activations' codes span the whole dtype, as in
            torch, whatever range shaped their scale).
    Returns:
        A uint8 or int8 tensor shaped like ``x``.

    Example: x = 12.750001, scale 0.3, qint8, zero point 0: torch x * f32(1/0.3) = 42.500004
    -> 43; onnx x / 0.3 = 42.5 exactly -> rint 42 (ties to even).
    """
    check_backend(backend)
    qmin, qmax = qrange(dtype, False, quant_min, quant_max)
    x = torch.as_tensor(x, dtype=torch.float32)
    scale = torch.as_tensor(scale, dtype=torch.float32).reshape(-1)
    zp = torch.as_tensor(zero_point).reshape(-1).to(torch.float32)
    if axis is not None:
        scale, zp = _along(axis, x.dim(), scale, zp)
    elif scale.numel() != 1:
        raise ValueError(f"per-tensor quantize takes one scale, got {scale.numel()}; pass axis=")
    if backend in _UNFUSED:
        return _UNFUSED[backend](x, scale, zp, qmin, qmax).to(INT_DTYPES[dtype])
    inv = (1.0 / scale).float()
    # Per tensor, fbgemm's vectorised kernel fuses the multiply-add; per channel, torch's
    # scalar loop rounds x * inv to float32 first, then adds zp (ties can differ).
    t = x * inv
    t += zp  # per channel: torch's own rint(f32(f32(x * inv) + zp)), exact as it stands
    q = torch.round(t)
    if axis is None and bool((zp != 0).any()):
        # Fused per tensor: |t - v| <= 2^-24 (|x*inv| + |t|) <= 2^-24 * 1024 where it
        # matters (|t| <= 512), so rint(t) equals rint(f32(v)) except within 2^-12 of a
        # half-integer; those few values (about 0.1%) are redone with the exact fma.
        near = (t - q).abs_().ge_(0.5 - 2.0**-12)
        if bool(near.any()):
            idx = near.nonzero(as_tuple=True)
            q[idx] = torch.round(_fma_f32(x[idx], inv.expand_as(x)[idx], zp.expand_as(x)[idx]))
    return q.clamp_(qmin, qmax).to(INT_DTYPES[dtype])


def _along(axis: int, dim: int, scale: torch.Tensor, zp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D per-channel ``scale`` and ``zp`` shaped to broadcast along ``axis`` of a ``dim``-D tensor."""
    shape = [1] * dim
    shape[axis] = -1
    return scale.reshape(shape), zp.reshape(shape)


def _quantize_linear(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: int,
                     qmax: int) -> torch.Tensor:
    """ONNX QuantizeLinear on float32: ``clip(rint(x / scale) + zp, qmin, qmax)``."""
    t = torch.round(x / scale)  # IEEE float32 division, rounded half to even
    # saturate before adding zp: beyond +-2^20 the code clips anyway, and float32 adds of
    # such integers stay exact (onnx's reference casts to int32 first, see the tests)
    t.clamp_(-(2.0**20), 2.0**20)
    return (t + zp).clamp_(qmin, qmax)


def _xnnpack_convert(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """XNNPACK's f32 -> qs8 convert (and ExecuTorch's quantize kernel): ``rint(f32(x * f32(1/s))) + zp``,
    the zero point added after rounding, never fused."""
    return (torch.round(x * (1.0 / scale).float()) + zp).clamp_(qmin, qmax)


# backends whose quantize is not torch's fused multiply-add
_UNFUSED = {"onnx": _quantize_linear, "xnnpack": _xnnpack_convert}


@torch.no_grad()
def dequantize(
    q: torch.Tensor,
    scale: torch.Tensor | float,
    zero_point: torch.Tensor | int,
    *,
    axis: int | None = None,
) -> torch.Tensor:
    """Integer codes back to float32: ``x = (q - zp) * scale``, as torch's dequantize.

    The same on every backend: ONNX's DequantizeLinear also computes ``f32(q - zp) * scale``
    (``q - zp`` is exact in float32, so both round once).

    Args:
        q: integer tensor (uint8, int8 or wider).
        scale, zero_point: scalars, or 1-D tensors along ``axis``.
    Returns:
        float32 tensor shaped like ``q``.
    """
    scale, zp = _dequantize_numbers(scale, zero_point)
    if axis is not None:
        scale, zp = _along(axis, q.dim(), scale, zp)
    return (q.to(torch.int32) - zp).to(torch.float32) * scale


def dequantizer(scale: float, zero_point: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """``dequantize(q, scale, zero_point)`` per tensor as a call of ``q`` alone, its numbers
    prepared once (a captured program's step: ``qcal.graph.capture``)."""
    s, zp = _dequantize_numbers(scale, zero_point)
    return lambda q: (q.to(torch.int32) - zp).to(torch.float32) * s


def _dequantize_numbers(scale: torch.Tensor | float, zero_point: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 scales, int32 zero points), 1-D: what ``dequantize`` computes with."""
    return (torch.as_tensor(scale, dtype=torch.float32).reshape(-1),
            torch.as_tensor(zero_point).reshape(-1).to(torch.int32))
