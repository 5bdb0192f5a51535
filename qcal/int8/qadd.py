"""Quantized elementwise add, rounded exactly as torch's quantized CPU add for each engine.

Read from ``aten/src/ATen/native/quantized/cpu`` and pytorch's QNNPACK, confirmed bit for bit
in tests/int8/test_int8_ops.py; notation as in ``ops.py`` (``s`` scales, ``z`` zero points,
``f32`` float32 rounding, ``rint`` half to even).

``add`` mirrors ``torch.ops.quantized.add`` / ``add_relu``:

fbgemm (and x86, the same ATen kernel)
    the vectorised ``qadd_kernel``: dequantize with a fused multiply-add,
    ``d = fma(s, q, f32(-z*s))``; ``c = f32(da + db)`` (ReLU: ``max(c, 0)``);
    ``out = clamp(rint(f32(c * f32(1/so))) + zo)``. The scalar tail of each thread's range in
    memory order (``n mod 64`` elements: two 32-byte vectors per step, on AVX2 and AVX-512
    CPUs alike, see ``_add_step``; ranges split at 32768 elements per thread) runs the scalar
    lambda instead: ``d = f32((q - z) * s)`` and the zero point added *before* rounding,
    ``rint(f32(c * f32(1/so)) + zo)``.
qnnpack (same shapes)
    QNNPACK's fixed-point ``q8vadd``: ``ma = f32(sa/so)``,
    ``mb = f32(sb/so)``, ``shift = 21 - exponent(max(ma, mb))``, integer multipliers
    ``Ma = rint(ma*2^shift)``; ``acc = Ma(a - za) + Mb(b - zb)`` shifted right by ``shift``
    rounding half away from zero; ``out = clamp(acc + zo)``. Scale ratios must lie in
    [2^-14, 2^8) (QNNPACK refuses others).
ort
    onnxruntime's QLinearAdd (``qcal.int8.backends.ort``); a fused ReLU clamps at ``zo``.
xnnpack
    XNNPACK's fixed-point qs8/qu8 add (``qcal.int8.backends.xnnpack``): 21-bit multipliers,
    an arithmetic shift rounding half up; a fused ReLU clamps at ``zo``.
onnx / q31
    the real-valued ``(sa(a-za) + sb(b-zb))/so + zo`` in float64, then rint
    (onnxruntime's QLinearAdd; no torch kernel to match).
The result depends only on the pair of codes, so it is tabulated for all 65,536 pairs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from qcal.int8 import native
from qcal.int8.backends.ort import ort_add
from qcal.int8.backends.xnnpack import xnnpack_add
from qcal.int8.ops import check_codes, f32, is_nhwc

__all__ = ["add", "adder"]


def _qnnpack_add(a, za, b, zb, ma, mb, zo, lo, hi):
    exp = int(torch.frexp(torch.maximum(ma, mb))[1]) - 1  # float exponent of max(ma, mb)
    shift = 21 - exp
    am = int(torch.round(ma.double() * 2.0**shift))  # exact: only the exponent changes
    bm = int(torch.round(mb.double() * 2.0**shift))
    acc = am * (a.to(torch.int64) - za) + bm * (b.to(torch.int64) - zb)
    mask = (1 << shift) - 1
    rem = (acc & mask) - (acc < 0).to(torch.int64)
    acc = (acc >> shift) + (rem > (mask >> 1)).to(torch.int64)  # half away from zero
    return (acc + zo).clamp(lo, hi)


def _fbgemm_add(a, za, sa, b, zb, sb, so, zo, relu, lo, hi, tail: bool):
    """torch's qadd_kernel on code tensors: vector lanes, or (``tail``) its scalar lambda."""
    if tail:  # f32((q - z) * s); fbgemm's legacy Quantize: zero point before rounding
        c = (a - za).float() * sa + (b - zb).float() * sb
        c = c.clamp(min=0.0) if relu else c
        return torch.round(c * (1.0 / so) + zo).clamp(lo, hi)
    # fma(s, q, f32(-z*s)): exact in float64, rounded once; zero point after rounding
    da = (sa.double() * a.double() + (sa * -za).double()).float()
    db = (sb.double() * b.double() + (sb * -zb).double()).float()
    c = da + db
    c = c.clamp(min=0.0) if relu else c
    return (torch.round(c * (1.0 / so)) + zo).clamp(lo, hi)


@torch.no_grad()
def add(
    a_q: torch.Tensor, a_scale: float, a_zero_point: int,
    b_q: torch.Tensor, b_scale: float, b_zero_point: int,
    out_scale: float, out_zero_point: int,
    *, relu: bool = False, backend: str = "fbgemm",
) -> torch.Tensor:
    """Quantized elementwise add (torch.ops.quantized.add / add_relu), see the module doc.

    The result depends only on the pair of codes, so it is tabulated for all 65,536 pairs
    with the backend's formula and looked up (exact and fast).

    Example (fbgemm, a lone element): a=5, b=0 (scales 0.5, zero points 0), so=1, zo=1:
    the scalar path gives rint(2.5 + 1) = 4; on vector lanes rint(2.5) + 1 = 3.

    Args:
        a_q, b_q: codes of the same dtype and shape (broadcastable for onnx/q31). torch walks
            them in ``a_q``'s memory order (contiguous or channels_last); ``b_q`` is read in it.
        relu: fused ReLU (outputs below ``out_zero_point`` clamp to it).
    Returns:
        Codes of ``a_q``'s dtype, in ``a_q``'s memory format.
    """
    return adder(a_q, a_scale, a_zero_point, b_q, b_scale, b_zero_point, out_scale, out_zero_point, relu=relu,
                 backend=backend)(a_q, b_q)


def adder(a_q: torch.Tensor, a_scale: float, a_zero_point: int, b_q: torch.Tensor, b_scale: float,
          b_zero_point: int, out_scale: float, out_zero_point: int, *, relu: bool = False,
          backend: str = "fbgemm") -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``add(a, a_scale, ..., relu=relu, backend=backend)`` as a call of ``(a, b)`` for codes
    shaped, typed and laid out as ``a_q`` and ``b_q``, the table and the positions of fbgemm's
    scalar tail computed now (a captured program's step)."""
    check_codes(backend, a_q, "a_q")
    check_codes(backend, b_q, "b_q")
    if a_q.dtype != b_q.dtype:
        raise TypeError(f"a_q and b_q must share a dtype, got {a_q.dtype} and {b_q.dtype}")
    if backend in ("fbgemm", "qnnpack", "x86") and a_q.shape != b_q.shape:
        raise ValueError(f"a_q {tuple(a_q.shape)} and b_q {tuple(b_q.shape)} must have the same shape")
    if backend == "ort":  # computed directly, not through a pair table
        def ort(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            out = ort_add(a, a_scale, a_zero_point, b, b_scale, b_zero_point, out_scale, out_zero_point)
            return out.clamp_min(out_zero_point) if relu else out  # ORT drops the Relu only when Q clamps there
        return ort
    info = torch.iinfo(a_q.dtype)
    lo, hi = (max(info.min, out_zero_point) if relu else info.min), info.max
    table, tail_table = _tables(backend, a_q.dtype, a_zero_point, float(f32(a_scale)), b_zero_point,
                                float(f32(b_scale)), float(f32(out_scale)), out_zero_point, relu, lo, hi)
    broadcast = a_q.shape != b_q.shape  # onnx / q31
    shape = torch.broadcast_shapes(a_q.shape, b_q.shape)
    nhwc = not broadcast and a_q.dim() == 4 and is_nhwc(a_q) and not a_q.is_contiguous()
    fmt = torch.channels_last if nhwc else torch.contiguous_format
    pos = _scalar_tail(shape.numel()) if backend in ("fbgemm", "x86") else None  # the x86 engine: the same kernel

    def run(a_q: torch.Tensor, b_q: torch.Tensor) -> torch.Tensor:
        if broadcast:
            a_q, b_q = (t.contiguous() for t in torch.broadcast_tensors(a_q, b_q))
        a_q, b_q = a_q.contiguous(memory_format=fmt), b_q.contiguous(memory_format=fmt)
        # pair index in memory order: a * 256 + b (offset to 0..65535 for int8 codes)
        a_flat = a_q.permute(0, 2, 3, 1).reshape(-1) if nhwc else a_q.reshape(-1)
        b_flat = b_q.permute(0, 2, 3, 1).reshape(-1) if nhwc else b_q.reshape(-1)
        out = native.pair_lookup(a_flat, b_flat, table)  # one pass; else torch's index_select
        if out is None:
            out = table.index_select(0, a_flat.to(torch.int32).mul_(256).add_(b_flat).add_(-257 * info.min))
        if pos is not None and pos.numel():
            out[pos] = tail_table[a_flat[pos].to(torch.int32) * 256 + b_flat[pos] - 257 * info.min]
        if nhwc:
            n, c, h, w = a_q.shape
            return out.view(n, h, w, c).permute(0, 3, 1, 2)  # a channels_last (N, C, H, W) view
        return out.view(a_q.shape)

    return run


@functools.lru_cache(maxsize=256)
def _tables(backend: str, dtype: torch.dtype, za: int, sa: float, zb: int, sb: float, so: float, zo: int,
            relu: bool, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The backend's output for every (a, b) code pair, and fbgemm's scalar-tail one: once per
    (qparams, ReLU), not per call (a network adds with the same numbers at every inference).
    Callers only read them."""
    info = torch.iinfo(dtype)
    codes = torch.arange(info.min, info.max + 1)
    ta, tb = codes.repeat_interleave(256), codes.repeat(256)  # every (a, b) pair, a major
    sa_t, sb_t, so_t = (torch.tensor(v, dtype=torch.float32) for v in (sa, sb, so))
    args = (ta, za, sa_t, tb, zb, sb_t, so_t, zo, relu, lo, hi)
    table = _ADD_TABLES.get(backend, _fbgemm_table)(*args).to(dtype)
    tail = _fbgemm_add(*args, tail=True).to(dtype) if backend in ("fbgemm", "x86") else None
    return table, tail


def _qnnpack_table(ta, za, sa, tb, zb, sb, so, zo, relu, lo, hi) -> torch.Tensor:
    ma, mb = sa / so, sb / so
    for m in (ma, mb):
        if not 2.0**-14 <= float(m) < 2.0**8:
            raise ValueError(f"QNNPACK add needs input/output scale ratios in [2^-14, 2^8), got {float(m):.7g}")
    return _qnnpack_add(ta, za, tb, zb, ma, mb, zo, lo, hi)


def _real_table(ta, za, sa, tb, zb, sb, so, zo, relu, lo, hi) -> torch.Tensor:
    """onnx / q31: the real-valued sum in float64, the zero point before rounding."""
    real = sa.double() * (ta.double() - za) + sb.double() * (tb.double() - zb)
    return torch.round(real / so.double() + zo).clamp(lo, hi)


def _fbgemm_table(ta, za, sa, tb, zb, sb, so, zo, relu, lo, hi) -> torch.Tensor:
    """fbgemm and x86 (the same ATen kernel): the vector lanes' rule (tails are patched after)."""
    return _fbgemm_add(ta, za, sa, tb, zb, sb, so, zo, relu, lo, hi, tail=False)


# backend -> the add's output code for every (a, b) pair of codes
_ADD_TABLES: dict[str, Callable[..., torch.Tensor]] = {"qnnpack": _qnnpack_table, "onnx": _real_table,
                                                       "q31": _real_table, "xnnpack": xnnpack_add}


_GRAIN = 32768  # at::internal::GRAIN_SIZE: TensorIterator splits work above it


#: Codes per step of torch's vectorised qadd loop, by ATen's CPU capability. ``qadd_stub`` is
#: registered with ``REGISTER_DISPATCH``, which leaves the AVX-512 slot empty, so AVX-512
#: CPUs run the AVX2 build too: ``Vectorized<quint8>`` holds 32 codes and ``vectorized_loop``
#: (ATen's cpu/Loops.h) stores two vectors per step. DEFAULT (no AVX2) is not modelled: its
#: vector path rounds differently, so everything is treated as vector lanes there.
_ADD_STEP: dict[str, int] = {"AVX2": 64, "AVX512": 64}


def _add_step() -> int:
    """Codes per vector step of the qadd kernel ATen dispatches to on this CPU (1: none)."""
    return _ADD_STEP.get(torch.backends.cpu.get_cpu_capability(), 1)


def _scalar_tail(n: int) -> torch.Tensor:
    """Memory positions torch's vectorised elementwise loop leaves to its scalar lambda.

    ``cpu_kernel_vec`` runs ``_add_step()`` codes per step over each thread's contiguous range
    in memory order; what is left at the end of a range goes through the scalar lambda.
    Ranges: ``at::parallel_for`` with grain 32768 splits ``n`` into ``ceil(n / threads)`` pieces.
    """
    step = _add_step()
    threads = max(1, min(torch.get_num_threads(), -(-n // _GRAIN))) if n >= _GRAIN else 1
    chunk = max(1, -(-n // threads))
    pos = [torch.arange(b + (min(b + chunk, n) - b) // step * step, min(b + chunk, n)) for b in range(0, n, chunk)]
    return torch.cat(pos) if pos else torch.zeros(0, dtype=torch.int64)
