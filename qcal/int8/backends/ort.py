"""ONNX Runtime's CPU arithmetic (MLAS) for the ``"ort"`` flavour, on plain integer tensors.

What ``onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])`` computes
for a QDQ model under its default session options (graph optimization ORT_ENABLE_ALL), as
read in microsoft/onnxruntime and confirmed against onnxruntime 1.32 on small hand-built
graphs (tests/int8/test_int8_ort.py). ``f32(.)`` rounds to float32, ``rint`` half to even.

Graph (``core/optimizer/qdq_transformer/selectors_actions/qdq_selectors.cc``,
``qdq_actions.cc``): DQ -> Conv -> Q becomes QLinearConv (then NHWC with Transposes),
DQ -> Gemm -> Q QGemm, DQ -> Add -> Q QLinearAdd, DQ -> GlobalAveragePool -> Q
QLinearGlobalAveragePool, DQ -> MaxPool/Flatten -> Q with equal qparams drops the pair (the op
runs on uint8). A Relu/Clip between the op and its Q is dropped when Q's range already
clamps there (``IsClipMadeRedundantByQ``). A bias DequantizeLinear whose scale is far from
``x_scale * w_scale`` leaves the float Conv in place; a close one (1 % off here) is fused and
its int32 values are used as if they were at ``x_scale * w_scale``. With int8 (qint8)
activations these fusions run on uint8 only where an int8 Q/DQ pair could be turned into one
(its QuantizeLinear read once); the layers and adds beside a value read twice stay in float
(``qcal.int8.backends.ort_s8``).

QuantizeLinear (``mlas/lib/quantize.cpp``): ``q = clamp(rint(f32(x / s)), qmin - z, qmax - z) + z``:
a division, where torch multiplies by ``f32(1/s)`` (the two differ near ties).
DequantizeLinear: ``f32((q - z) * s)``.

QLinearConv / QGemm (``providers/cpu/quantization/qlinearconv.cc``,
``mlas/lib/quantize.cpp: MlasRequantizeOutput``): ``M_j = f32(f32(sa * sw_j) / so)``,
``out = clamp(rint(f32(f32(acc + b_j) * M_j)), 0 - zo, 255 - zo) + zo`` (zero point added
after rounding; the clamp happens in float, before the conversion, so nothing overflows).
``b_j`` is the int32 bias as written in the file (qcal writes ``rint(f32(b / f32(sa*sw_j)))``,
onnxruntime's own quantizer's rule).

Kernels (``mlas/lib/platform.cpp``, ``qgemm_kernel_avx2.cpp``, ``convsym.cpp``; which one a
CPU runs, and ``QCAL_ORT_CPU`` to choose it: ``qcal.int8.cpu.mlas``): uint8
activations with int8 weights run U8S8 kernels. On AVX2 and on AVX-512 without VNNI they
multiply raw codes with ``vpmaddubsw``, which adds the products of K positions (2p, 2p+1)
into int16 **with saturation**: the same pairs as FBGEMM's, in im2col (kh, kw, c) order, K
padded with zeros (``qcal.int8.common.saturation``), for the im2col GEMM and the symmetric-weight
ConvSym kernel alike. Depthwise kernels (``MlasConvDepthwise``, ``MlasConvSymDepthwise``)
widen to int16 before multiplying: exact. With AVX-VNNI / AVX512-VNNI (``vpdpbusd``) or
AMX nothing saturates; ``session.x64quantprecision = "1"`` also selects exact kernels.

QLinearAdd (``mlas/lib/intrinsics/avx2/qladd_avx2.cpp``, x86; ARM uses fixed point):
``ra = f32(sa/so)``, ``rb = f32(sb/so)``, ``c = f32(zo) - fma(ra, za, f32(rb*zb))``, then per
element ``rint(fma(a, ra, fma(b, rb, c)))`` on the raw codes, saturated to the dtype.
QLinearAveragePool (``contrib_ops/cpu/quantization/qlinear_pool.cc``): each code dequantized
``f32(sx * (q - zx))``, the window summed in float from 0 in (h, w) order, divided by the
count, then ``clamp(rint(f32(f32(y / sy) + zy)))`` (zero point before rounding); a window
covering the whole unpadded image runs QLinearGlobalAveragePool's integer arithmetic instead.
QLinearGlobalAveragePool (``mlas/lib/qlgavgpool.cpp``): ``acc = sum(a) - za * HW``, then
MlasRequantizeOutput with ``M = f32(sx / f32(sy * HW))``.
"""

from __future__ import annotations

import functools
from importlib import metadata

import torch

from qcal.int8 import native
from qcal.int8.cpu.isa import AssumedCpu, assumed_cpu
from qcal.int8.cpu.mlas import DISPATCHES, FROM_FBGEMM, MlasDispatch, parse_ort_cpu
from qcal.qparams import _fma_f32

__all__ = [
    "ORT_OPTIONS",
    "ort_add",
    "ort_avg_pool2d",
    "ort_clip",
    "ort_dequantize",
    "ort_dispatch",
    "ort_environment",
    "ort_global_avg_pool",
    "ort_instruction_set",
    "ort_quantize",
    "ort_saturates",
]

#: Session config entries qcal's "ort" flavour assumes: none (the defaults).
ORT_OPTIONS: dict[str, str] = {}



def ort_dispatch(cpu: AssumedCpu | str | None = None) -> MlasDispatch:
    """The MLAS dispatch the ort flavour predicts: a dispatch name, an ``AssumedCpu``, or None
    (``assumed_cpu()``: the emulated client's CPU, else ``QCAL_ORT_CPU``, ...; see the module doc).

    Example:
        >>> ort_dispatch("avx512f").nchwc_block
        16
    """
    if isinstance(cpu, str):
        return DISPATCHES[parse_ort_cpu(cpu, "dispatch")]
    c = assumed_cpu() if cpu is None else cpu
    name = getattr(c, "mlas", None)  # an AssumedCpu pickled before the field existed has none
    return DISPATCHES[parse_ort_cpu(name, "AssumedCpu.mlas") if name else FROM_FBGEMM[c.isa]]


def ort_instruction_set() -> str:
    """The MLAS int8 kernel family the ort flavour assumes, e.g. "AVX2 (no VNNI)", "AMX"."""
    return ort_dispatch().int8


def ort_saturates(path: str = "gemm", saturate: bool | None = None) -> bool:
    """Whether MLAS's U8S8 kernel saturates int16 pairs: ``saturate`` if given, else as on the
    dispatch qcal assumes (``ort_dispatch``). Depthwise kernels never do.

    Example:
        >>> ort_saturates("depthwise"), ort_saturates("gemm", saturate=True)
        (False, True)
    """
    if saturate is not None:
        return bool(saturate)
    return path != "depthwise" and ort_dispatch().saturates


def ort_environment() -> dict[str, str]:
    """What a saved run records about the ort prediction: onnxruntime's version (the
    installed package, or "not installed"), the MLAS int8 kernels assumed, whether they
    saturate, and the float kernels (``qcal.int8.cpu.mlas``)."""
    try:
        version = metadata.version("onnxruntime")
    except metadata.PackageNotFoundError:
        version = "not installed"
    d = ort_dispatch()
    return {"onnxruntime_version": version, "ort_instruction_set": d.int8, "ort_u8s8_saturates": str(d.saturates),
            "ort_float_kernels": f"{d.float_kernels} (NCHWc block {d.nchwc_block})"}


def _range(dtype: torch.dtype) -> tuple[int, int]:
    info = torch.iinfo(dtype)
    return info.min, info.max


@functools.lru_cache(maxsize=4096)
def _f32(value: float) -> torch.Tensor:
    """``value`` as a 0-d float32 tensor (cached: building one costs more than a small op; never
    written to)."""
    return torch.tensor(value, dtype=torch.float32)


# The per-call functions below take integer codes (or, for ort_quantize, a detached float
# tensor) and so need no torch.no_grad(): its context costs more than a small op.
def ort_quantize(x: torch.Tensor, scale: float, zero_point: int, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """onnxruntime's QuantizeLinear: ``clamp(rint(f32(x / scale)), qmin - zp, qmax - zp) + zp``.

    Example: 0.25 at scale 0.5, zero point 3 -> rint(0.5) + 3 = 3 (torch's fused
    ``rint(0.25 * 2 + 3)`` gives 4).
    """
    lo, hi = _range(dtype)
    x = x if isinstance(x, torch.Tensor) and x.dtype == torch.float32 else torch.as_tensor(x, dtype=torch.float32)
    t = torch.div(x.detach(), _f32(float(scale)))
    return t.clamp_(lo - zero_point, hi - zero_point).round_().add_(zero_point).to(dtype)


def ort_dequantize(q: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """onnxruntime's DequantizeLinear: ``f32((q - zp) * scale)``. ``q - zp`` of 8-bit codes is
    exact in float32, so the subtraction runs there (one conversion instead of two)."""
    if q.dtype in (torch.uint8, torch.int8):
        return q.float().sub_(zero_point).mul_(_f32(float(scale)))
    return (q.to(torch.int32) - zero_point).float() * torch.tensor(scale, dtype=torch.float32)


def ort_clip(q: torch.Tensor, scale: float, zero_point: int, lo: float, hi: float) -> torch.Tensor:
    """``DQ -> Clip(lo, hi) -> Q`` with the same qparams, in float as onnxruntime runs it when
    Q's range does not already make the Clip redundant (e.g. ReLU6 after a conv whose output
    zero point is above 0).

    Each output code depends on its input code alone, so the float path runs once per code
    (256 values, cached) and the tensor is mapped through that table: a clamp of the codes
    when the table is one (it is for every scale tried), else a lookup.
    """
    if q.dtype not in (torch.uint8, torch.int8):
        return ort_quantize(ort_dequantize(q, scale, zero_point).clamp_(lo, hi), scale, zero_point, q.dtype)
    table, bounds = _clip_table(float(scale), int(zero_point), float(lo), float(hi), q.dtype)
    if bounds is not None:
        return q.clamp(*bounds)
    return table[q.to(torch.int64) - _range(q.dtype)[0]]


@functools.lru_cache(maxsize=1024)
def _clip_table(scale: float, zero_point: int, lo: float, hi: float,
                dtype: torch.dtype) -> tuple[torch.Tensor, tuple[int, int] | None]:
    """``ort_clip`` of every code of ``dtype``, and (a, b) when that equals ``clamp(code, a, b)``."""
    qmin, qmax = _range(dtype)
    codes = torch.arange(qmin, qmax + 1, dtype=torch.int32).to(dtype)
    table = ort_quantize(ort_dequantize(codes, scale, zero_point).clamp_(lo, hi), scale, zero_point, dtype)
    a, b = int(table[0]), int(table[-1])
    return table, ((a, b) if torch.equal(table, codes.clamp(a, b)) else None)


@functools.lru_cache(maxsize=256)
def _add_table(sa, za, sb, zb, so, zo, dtype) -> torch.Tensor:
    """QLinearAdd's result for every (a, b) code pair, a major (65,536 entries; cached per qparams)."""
    lo, hi = _range(dtype)
    f = torch.float32
    ra = torch.tensor(sa, dtype=f) / torch.tensor(so, dtype=f)
    rb = torch.tensor(sb, dtype=f) / torch.tensor(so, dtype=f)
    # the compiler contracts ``ra * za + rb * zb`` into fma(ra, za, f32(rb * zb)) (measured: the
    # unfused sum differs on 3 of 31 random scale sets, this form on none)
    fixed = torch.tensor(float(zo), dtype=f) - _fma_f32(ra, torch.tensor(float(za)), rb * float(zb))
    codes = torch.arange(lo, hi + 1, dtype=f)
    a, b = codes.repeat_interleave(256), codes.repeat(256)
    t = _fma_f32(b, rb, fixed)
    t = _fma_f32(a, ra, t)
    return torch.round(t).clamp_(lo, hi).to(dtype)


def ort_add(a_q: torch.Tensor, a_scale: float, a_zero_point: int, b_q: torch.Tensor, b_scale: float,
            b_zero_point: int, out_scale: float, out_zero_point: int) -> torch.Tensor:
    """onnxruntime's QLinearAdd on x86 (see the module doc); shapes broadcast as ONNX's Add."""
    if a_q.dtype != b_q.dtype or a_q.dtype not in (torch.uint8, torch.int8):
        raise TypeError(f"a_q and b_q must both be uint8 or int8 codes, got {a_q.dtype} and {b_q.dtype}")
    lo = _range(a_q.dtype)[0]
    table = _add_table(float(a_scale), int(a_zero_point), float(b_scale), int(b_zero_point), float(out_scale),
                       int(out_zero_point), a_q.dtype)
    a, b = torch.broadcast_tensors(a_q, b_q)
    nhwc = a.dim() == 4 and not a.is_contiguous() and a.is_contiguous(memory_format=torch.channels_last)
    rows = (lambda t: t.permute(0, 2, 3, 1)) if nhwc else (lambda t: t)
    a_rows, b_rows = rows(a).contiguous(), rows(b).contiguous()
    out = native.pair_lookup(a_rows.reshape(-1), b_rows.reshape(-1), table)  # one pass, same table
    if out is None:
        idx = (a_rows.to(torch.int32) - lo).mul_(256).add_(b_rows.to(torch.int32) - lo)
        out = table[idx.reshape(-1)]
    out = out.reshape(a_rows.shape)
    return out.permute(0, 3, 1, 2) if nhwc else out


def ort_global_avg_pool(x_q: torch.Tensor, x_scale: float, x_zero_point: int, out_scale: float,
                        out_zero_point: int) -> torch.Tensor:
    """onnxruntime's QLinearGlobalAveragePool: (N, C, H, W) -> (N, C, 1, 1)."""
    lo, hi = _range(x_q.dtype)
    size = x_q.shape[-2] * x_q.shape[-1]
    if x_q.dtype in (torch.uint8, torch.int8) and 256 * size < 2 ** 24:  # every partial sum exact in float32
        acc = x_q.sum((-2, -1), keepdim=True, dtype=torch.float32).sub_(x_zero_point * size)
    else:
        acc = (x_q.sum((-2, -1), keepdim=True, dtype=torch.int64) - x_zero_point * size).float()
    y = acc.mul_(_gap_multiplier(float(x_scale), float(out_scale), size))
    return y.clamp_(lo - out_zero_point, hi - out_zero_point).round_().add_(out_zero_point).to(x_q.dtype)


@functools.lru_cache(maxsize=1024)
def _gap_multiplier(x_scale: float, out_scale: float, size: int) -> torch.Tensor:
    """QLinearGlobalAveragePool's ``f32(sx / f32(sy * HW))`` (cached; never written to)."""
    f = torch.float32
    return torch.tensor(x_scale, dtype=f) / (torch.tensor(out_scale, dtype=f) * float(size))


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[-1]))


@torch.no_grad()
def ort_avg_pool2d(x_q: torch.Tensor, scale: float, zero_point: int, kernel_size, stride=None, padding=0,
                   ceil_mode: bool = False, count_include_pad: bool = True) -> torch.Tensor:
    """onnxruntime's QLinearAveragePool with the input's qparams on both sides (see the module doc)."""
    (kh, kw), (ph, pw) = _pair(kernel_size), _pair(padding)
    sh, sw = _pair(stride if stride not in (None, []) else kernel_size)
    n, c, h, w = x_q.shape
    if (kh, kw) == (h, w) and (ph, pw) == (0, 0):  # onnxruntime falls back to its global average pool
        return ort_global_avg_pool(x_q, scale, zero_point, scale, zero_point)
    f = torch.float32
    x = (x_q.to(torch.int32) - zero_point).to(f) * torch.tensor(scale, dtype=f)
    out_hw = []
    for size, k, s, p in ((h, kh, sh, ph), (w, kw, sw, pw)):
        span = size + 2 * p - k
        o = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (o - 1) * s >= size + p:  # the last window must start inside the input
            o -= 1
        out_hw.append(o)
    oh, ow = out_hw
    acc = torch.zeros(n, c, oh, ow, dtype=f)
    count = torch.zeros(oh, ow, dtype=f)
    hs = torch.arange(oh) * sh - ph
    ws = torch.arange(ow) * sw - pw
    for i in range(kh):
        for j in range(kw):
            r, q = hs + i, ws + j
            ok = ((r >= 0) & (r < h))[:, None] & ((q >= 0) & (q < w))[None, :]
            vals = x[:, :, r.clamp(0, h - 1)][:, :, :, q.clamp(0, w - 1)]
            acc = torch.where(ok, acc + vals, acc)  # skipped taps add nothing (the kernel skips them)
            count += ok.to(f)
    if count_include_pad:  # onnxruntime divides by the whole kernel then (padding counted, clipped windows too)
        count = torch.full_like(count, float(kh * kw))
    y = acc / count
    lo, hi = _range(x_q.dtype)
    t = y / torch.tensor(scale, dtype=f) + torch.tensor(float(zero_point), dtype=f)
    return torch.round(t).clamp_(lo, hi).to(x_q.dtype)
