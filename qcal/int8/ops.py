"""The integer pools a CNN needs between layers, rounded exactly as torch's quantized CPU ops.

The elementwise ``add`` is in ``qadd.py``; it shares this module's code checks. Each op follows the kernel torch runs for the chosen engine (``x86`` runs fbgemm's ATen
kernels for all of them; read from
``aten/src/ATen/native/quantized/cpu`` and pytorch's QNNPACK, confirmed bit for bit in
tests/int8/test_int8_ops.py). ``s`` scales, ``z`` zero points, ``f32`` float32 rounding, ``rint``
half to even; pooled outputs keep the input's scale and zero point, as torch's do.

max_pool2d: the maximum of the codes in each window (exact; no engine differences, except
    that QNNPACK refuses 1x1 windows where qcal still computes them).
avg_pool2d (``torch.nn.functional.avg_pool2d``)
    fbgemm, NCHW input: ``out = clamp(rint(f32(f32(sum(a - za)) * f32(1/d)) + zo))``: zero point
    added *before* rounding, product and sum rounded separately (not fused); ``d`` the divisor
    (count_include_pad / divisor_override as torch).
    fbgemm, channels_last input: channels below ``C // V * V`` (V = 16 lanes on AVX-512, 8 on
    AVX2) run ``rint(acc * f32(1/d)) + zo`` (zero point after rounding); the remaining
    channels run ``rint(f32(acc * r) + zo)`` with ``r = f32(1/f32(1/f32(1/d)))`` (zero point
    before rounding).
    qnnpack (quint8, no ceil_mode): padded pixels count as ``za`` and the divisor is always
    ``kh*kw`` (count_include_pad and divisor_override are ignored, as QNNPACK does);
    ``out = clamp(rint(f32(acc * f32(s / f32(s*kh*kw)))) + zo)``. QNNPACK refuses 1x1 windows.
adaptive_avg_pool2d
    fbgemm, NCHW: ``rint(f32(sum(a)) * f32(f32(1/kh)/kw))`` on the raw codes, no clamp.
    fbgemm, channels_last (the AVX2 kernel, 8 lanes, also on AVX-512 CPUs): ``acc = sum(a - za)``,
    ``r = f32(1/f32(1/f32(1/(kh*kw))))``; channels below ``C // 8 * 8``: ``rint(fma(acc, r, zo))``
    (one rounding), the rest ``rint(f32(acc*r) + zo)``.
    qnnpack: when the input size is a multiple of the output size (and differs from it),
    QNNPACK's average pool with kernel = stride = in/out; otherwise as fbgemm.
Memory format matters because torch picks its kernel by it: a tensor that is contiguous in
channels_last (which includes C == 1 or H == W == 1) takes the channels_last path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from qcal.int8 import native
from qcal.int8.backends.ort import ort_avg_pool2d, ort_global_avg_pool
from qcal.schemes import check_backend

__all__ = ["adaptive_avg_pool2d", "adaptive_avg_pooler", "avg_pool2d", "flatten", "max_pool2d", "max_pooler"]


def check_codes(backend: str, x: torch.Tensor, name: str = "x_q") -> None:
    """ValueError for an unknown backend, TypeError unless ``x`` holds uint8 or int8 codes."""
    check_backend(backend)
    if x.dtype not in (torch.uint8, torch.int8):
        raise TypeError(f"{name} must hold uint8 or int8 codes, got {x.dtype}")


def f32(v: float) -> torch.Tensor:
    """``v`` rounded to a float32 scalar tensor (how torch's kernels receive scales)."""
    return torch.tensor(v, dtype=torch.float32)


def _clamp_to(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    info = torch.iinfo(dtype)
    return v.clamp(info.min, info.max).to(dtype)


def _lanes(kernel: str) -> int:
    """Float lanes torch's quantized pooling kernel uses on this CPU (0: scalar only).

    The average-pool kernel is also registered for AVX-512 (16 lanes); the adaptive one is
    not, so AVX-512 machines run its AVX2 build (8 lanes).
    """
    cap = torch.backends.cpu.get_cpu_capability()
    if kernel == "adaptive":
        return 8 if cap in ("AVX2", "AVX512") else 0
    return {"AVX512": 16, "AVX2": 8}.get(cap, 0)


def _pair(v, name: str) -> tuple[int, int]:
    t = (v, v) if isinstance(v, int) else tuple(int(i) for i in v)
    if len(t) == 1:
        t = (t[0], t[0])
    if len(t) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return t


@torch.no_grad()
def max_pool2d(
    x_q: torch.Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
) -> torch.Tensor:
    """Quantized max pool (torch.max_pool2d on quantized tensors): the window maximum of codes.

    (N, C, H, W) -> (N, C, H', W'), same dtype and qparams; integers are exact in float32.
    """
    call = max_pooler(x_q, kernel_size, stride, padding, dilation, ceil_mode)
    out = call(x_q) if call is not None else None
    if out is not None:
        return out
    k, s, p, d = _pool_pairs(kernel_size, stride, padding, dilation)
    out = F.max_pool2d(x_q.float(), k, s, p, d, ceil_mode)
    return out.to(x_q.dtype)


def max_pooler(example: torch.Tensor, kernel_size, stride=None, padding=0, dilation=1,
               ceil_mode: bool = False) -> Callable[[torch.Tensor], torch.Tensor | None] | None:
    """``max_pool2d(x_q, ...)``'s native pass (one pass, no float copies) as a call of ``x_q``
    for codes shaped and laid out as ``example`` (channels_last), torch's checks and output
    size computed now; None where that pass does not apply (the call: None where it fails)."""
    if example.dtype not in (torch.uint8, torch.int8):
        raise TypeError(f"x_q must hold uint8 or int8 codes, got {example.dtype}")
    k, s, p, d = _pool_pairs(kernel_size, stride, padding, dilation)
    if not (example.dim() == 4 and example.numel() and is_nhwc(example)):
        return None
    # torch's checks and output size, on a shape-only tensor
    shape = F.max_pool2d(torch.empty(example.shape, device="meta"), k, s, p, d, ceil_mode).shape
    return native.max_pooler(tuple(example.shape), example.dtype, k, s, p, d, tuple(shape[-2:]))


def _pool_pairs(kernel_size, stride, padding, dilation) -> tuple[tuple[int, int], ...]:
    k = _pair(kernel_size, "kernel_size")
    s = k if stride is None or (not isinstance(stride, int) and len(stride) == 0) else _pair(stride, "stride")
    return k, s, _pair(padding, "padding"), _pair(dilation, "dilation")


def _window_sums(xc: torch.Tensor, k, s, p, ceil_mode):
    """Per window: sum of centred codes (float64, exact), real-pixel count, padded-window size."""
    sums = F.avg_pool2d(xc, k, s, p, ceil_mode, True, 1)
    ones = torch.ones_like(xc[:1, :1])
    count = F.avg_pool2d(ones, k, s, p, ceil_mode, True, 1)
    h, w = xc.shape[-2:]
    oh, ow = sums.shape[-2:]
    hs = torch.arange(oh) * s[0] - p[0]
    ws = torch.arange(ow) * s[1] - p[1]
    ph = torch.minimum(hs + k[0], torch.tensor(h + p[0])) - hs
    pw = torch.minimum(ws + k[1], torch.tensor(w + p[1])) - ws
    pool = (ph[:, None] * pw[None, :]).double()
    return sums, count, pool


def is_nhwc(x: torch.Tensor) -> bool:
    """Whether torch picks its channels_last kernel for ``x`` (4-D, contiguous in that format)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)


def _qnnpack_avg(xc, scale, zo, k, s, p, dtype):
    acc = F.avg_pool2d(xc, k, s, p, False, True, 1)  # pads hold za: centred zeros
    sc = f32(scale)
    mult = sc / (sc * float(k[0] * k[1]))  # input_scale / (output_scale * pooling_size)
    return _clamp_to(torch.round(acc.float() * mult) + zo, dtype)


@torch.no_grad()
def avg_pool2d(
    x_q: torch.Tensor, x_scale: float, x_zero_point: int, kernel_size, stride=None, padding=0,
    ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: int | None = None,
    *, backend: str = "fbgemm",
) -> torch.Tensor:
    """Quantized average pool as torch computes it for ``backend`` and x_q's memory format.

    The output keeps the input's scale and zero point (as torch's). See the module doc for
    the rounding of each path. (N, C, H, W) -> (N, C, H', W'), channels_last kept.
    """
    check_codes(backend, x_q)
    if backend == "ort":  # onnxruntime's QLinearAveragePool (ONNX AveragePool has no divisor_override)
        if divisor_override is not None:
            raise ValueError(f"the ort flavour has no divisor_override (ONNX AveragePool divides by the window), "
                             f"got {divisor_override}")
        return ort_avg_pool2d(x_q, x_scale, x_zero_point, kernel_size, stride, padding, ceil_mode, count_include_pad)
    k = _pair(kernel_size, "kernel_size")
    s = k if stride is None or (not isinstance(stride, int) and len(stride) == 0) else _pair(stride, "stride")
    p = _pair(padding, "padding")
    za = int(x_zero_point)
    xc = x_q.double() - za
    nhwc = is_nhwc(x_q)
    if backend == "qnnpack" and x_q.dtype == torch.uint8 and not ceil_mode:
        if k == (1, 1):
            raise ValueError("QNNPACK refuses 1x1 average pooling (torch raises); use kernel_size > 1")
        out = _qnnpack_avg(xc, x_scale, za, k, s, p, x_q.dtype)
        return out.contiguous(memory_format=torch.channels_last) if nhwc else out.contiguous()
    sums, count, pool = _window_sums(xc, k, s, p, ceil_mode)
    if divisor_override:
        div = torch.full_like(pool, float(divisor_override))
    else:
        div = pool if count_include_pad else count[0, 0]
    if not nhwc:
        mult = (1.0 / div).float()  # float multiplier = (double) 1.0 / divide_factor
        return _clamp_to(torch.round(sums.float() * mult + float(za)), x_q.dtype)  # not fused
    mult = (1.0 / div.float()).float()  # float(input_scale / output_scale) / divide_factor
    twice = (1.0 / (1.0 / mult)).float()  # quantize_val(1.0f / multiplier): reciprocal twice
    lanes = _lanes("avg")
    c = x_q.shape[1]
    vector = (torch.arange(c) < (c // lanes) * lanes if lanes else torch.zeros(c, dtype=torch.bool)).view(1, -1, 1, 1)
    # vector lanes: QuantizeAvx512 (zp after rounding); tail: fbgemm's legacy Quantize (before)
    y = torch.where(vector, torch.round(sums.float() * mult) + za, torch.round(sums.float() * twice + za))
    out = _clamp_to(y, x_q.dtype)
    return out.contiguous(memory_format=torch.channels_last)


def _adaptive_bounds(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, 2) int64 window [start, end): floor / ceil of ``(float)(o * in) / out``."""
    t = torch.arange(n_out, dtype=torch.float32)
    start = torch.floor(t * n_in / n_out)
    end = torch.ceil((t + 1) * n_in / n_out)
    return torch.stack([start, end], 1).to(torch.int64)


@torch.no_grad()
def adaptive_avg_pool2d(
    x_q: torch.Tensor, x_scale: float, x_zero_point: int, output_size, *, backend: str = "fbgemm",
) -> torch.Tensor:
    """Quantized adaptive average pool, rounded as torch does for ``backend`` (module doc).

    (N, C, H, W) -> (N, C, oh, ow); the output keeps the input's scale and zero point.
    """
    return adaptive_avg_pooler(x_q, x_scale, x_zero_point, output_size, backend=backend)(x_q)


def adaptive_avg_pooler(example: torch.Tensor, x_scale: float, x_zero_point: int, output_size, *,
                        backend: str = "fbgemm") -> Callable[[torch.Tensor], torch.Tensor]:
    """``adaptive_avg_pool2d(x_q, ...)`` as a call of ``x_q`` for codes shaped and laid out as
    ``example``, the windows and multipliers computed now (a captured program's step)."""
    check_codes(backend, example)
    oh, ow = _pair(output_size, "output_size")
    h, w = example.shape[-2:]
    if backend == "ort":
        if (oh, ow) != (1, 1):
            raise ValueError(f"the ort flavour pools to (1, 1) only (QLinearGlobalAveragePool), got {(oh, ow)}")
        return lambda x_q: ort_global_avg_pool(x_q, x_scale, x_zero_point, x_scale, x_zero_point)
    nhwc, za = is_nhwc(example), x_zero_point
    if backend == "qnnpack" and example.dtype == torch.uint8 and (h, w) != (oh, ow) and h % oh == 0 and w % ow == 0:
        k = (h // oh, w // ow)
        fmt = torch.channels_last if nhwc else torch.contiguous_format
        return lambda x_q: _qnnpack_avg(x_q.double() - za, x_scale, za, k, k, (0, 0), x_q.dtype).contiguous(
            memory_format=fmt)
    hb, wb = _adaptive_bounds(h, oh), _adaptive_bounds(w, ow)  # (oh, 2), (ow, 2) start/end
    h0, h1, w0, w1 = hb[:, 0, None], hb[:, 1, None], wb[None, :, 0], wb[None, :, 1]

    def window_sums(x_q: torch.Tensor) -> torch.Tensor:  # of the raw codes: exact in int64
        if (oh, ow) == (1, 1):  # a global pool: one window, the plain sum
            return x_q.sum((-2, -1), keepdim=True, dtype=torch.int64)
        integral = F.pad(x_q.to(torch.int64).cumsum(-2).cumsum(-1), (1, 0, 1, 0))  # (N, C, H+1, W+1)
        return integral[..., h1, w1] - integral[..., h0, w1] - integral[..., h1, w0] + integral[..., h0, w0]

    kh, kw = (h1 - h0).float(), (w1 - w0).float()  # (oh, 1), (1, ow)
    if not nhwc:
        r = (1.0 / kh) / kw  # kDHWr = f32(f32(1/kh) / kw)
        return lambda x_q: torch.round(window_sums(x_q).float() * r).to(x_q.dtype)  # torch does not clamp here
    c, lanes = example.shape[-3], _lanes("adaptive")
    vector = (torch.arange(c) < (c // lanes * lanes if lanes else 0)).view(-1, 1, 1)  # vector-lane channels
    mult = 1.0 / (kh * kw)  # float(input_scale / output_scale) / size
    twice = 1.0 / (1.0 / mult)  # quantize_val(1.0f / multiplier, ...)
    twice_d, offset = twice.double(), za * (kh * kw).to(torch.int64)

    def pooled(x_q: torch.Tensor) -> torch.Tensor:
        acc = (window_sums(x_q) - offset).float()
        fused = (acc.double() * twice_d + za).float()  # vector lanes: one rounding
        split = acc * twice + za  # scalar tail: product rounded, then + zp
        out = _clamp_to(torch.round(torch.where(vector, fused, split)), x_q.dtype)
        return out.contiguous(memory_format=torch.channels_last)

    return pooled


@torch.no_grad()
def flatten(x_q: torch.Tensor, start_dim: int = 1, end_dim: int = -1) -> torch.Tensor:
    """``torch.flatten`` on codes (a view when possible; qparams unchanged)."""
    return torch.flatten(x_q, start_dim, end_dim)
