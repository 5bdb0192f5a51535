"""The native u8 x s8 accumulator: FBGEMM's AVX2 kernel arithmetic in C, compiled on first use.

Without VNNI, FBGEMM multiplies raw codes with ``vpmaddubsw`` (adjacent products added in
int16 with saturation), widens pairs with ``vpmaddwd`` and adds in int32. ``native_u8s8.c``
does the same instructions in the same (kh, kw, c) order per group, so its result *is*
FBGEMM's accumulator, saturation included, with no emulation pass; and where no pair can
leave int16 (``2 * max a * max |w| <= 32767``) it is the exact integer sum every backend
needs. On this project's AVX2 CI machine it runs ResNet-shaped 3x3 convolutions at FBGEMM's
own speed (about half the time of the float32 convolution the float engine uses).
Its exact variant (``NativeConv.exact``) reads the same packed weights and widens both sides to
int16 (``vpmaddwd``: each product and pair sum exact in int32), so it is the exact sum whatever
the codes, for every kernel that does not saturate (FBGEMM with VNNI, qnnpack, ...), with AVX2
instructions only, at 1.1-1.25x the saturating kernel's time.

One build per instruction set, chosen at load (``variant()``; ``QCAL_NATIVE_ISA`` forces one
the CPU has): ``avx2``; ``avx512_vnni`` (AVX-512 F/BW/VL + VNNI: its exact GEMM sums 8 rows x 16
columns with 512-bit ``vpdpbusd`` and stores 16 outputs per register, its depthwise kernel takes
64 channels per register, saturating or exact; 0.59x and 0.80x the 256-bit kernels' time on
MobileNetV2's layers, AMD EPYC); ``avx_vnni`` (256-bit ``vpdpbusd``). The instructions follow the hardware, the arithmetic the CPU qcal emulates: a
VNNI build still runs the saturating kernel where FBGEMM saturates (``QCAL_CPU=avx2``, or the
depthwise kernel), so every build gives the same numbers. ``requant`` is the fused store alone,
for exact sums computed elsewhere (oneDNN's AMX/VNNI convolutions, 2.5-4x faster than this
kernel on such a CPU): one pass instead of torch's elementwise requantization.

Built with the system C compiler (``$CC``, else ``cc``/``gcc``) into ``data/native/`` (or
qcal's cache folder for an installed copy), once per source and compiler, atomically (several
processes may build at once). Without a compiler, an x86-64 CPU with AVX2, or with
``QCAL_NATIVE=0``, ``available()`` is False and every layer runs the float engine with the
pair emulation instead: the same numbers, slower (tests/int8/test_int8_native.py runs both).
The C code is integer arithmetic only, so no compiler flag (FMA contraction, fast-math) can
change a result.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from qcal.int8.native.build import (
    ENV_VAR,
    ISA_VAR,
    VARIANTS,
    available,
    load,
    load_seconds,
    loaded_variant,
    native_vnni,
    variant,
    why_unavailable,
)

__all__ = ["ENV_VAR", "ISA_VAR", "VARIANTS", "Epilogue", "NativeConv", "available", "histc", "load_seconds", "loaded_variant", "max_pool2d", "max_pooler", "native_conv", "native_vnni", "padded32", "pair_lookup", "quantize", "quantizer", "requant", "variant", "why_unavailable"]

#: Largest K (window length) whose raw sum and zero-point terms stay inside int32.
MAX_K = 16384
_ALIGN = 64


class _Epilogue(ctypes.Structure):
    _fields_ = [("m", ctypes.c_void_p), ("fb", ctypes.c_void_p), ("ib", ctypes.c_void_p), ("rcp", ctypes.c_float),
                ("mode", ctypes.c_int32), ("zo", ctypes.c_int32), ("lo", ctypes.c_int32), ("hi", ctypes.c_int32),
                ("big_is_low", ctypes.c_int32), ("is_signed", ctypes.c_int32)]


@dataclass(frozen=True, eq=False)
class Epilogue:
    """The requantization the native kernel fuses into its store (see ``native_u8s8.c``).

    Attributes:
        multiplier: float32 (O,) ``M_j``.
        mode: 0 no bias, 1 ``f32(acc) + fb_j``, 2 ``fma(fb_j, rcp, f32(acc))``, 3 ``f32(acc + ib_j)``.
        fb: float32 (O,) for modes 1 and 2; ib: int32 (O,) for mode 3; rcp: mode 2's float32.
        zo, lo, hi: output zero point and clamp range; out_dtype: torch.uint8 or torch.int8.
        big_is_low: a rounded value >= 2^31 becomes ``lo`` (the int32 conversion's INT_MIN), else ``hi``.
        max_bound: the largest ``|acc|`` bound for which the fused store is exact (see ``fused_epilogue``).
    """

    multiplier: torch.Tensor
    mode: int
    fb: torch.Tensor | None
    ib: torch.Tensor | None
    rcp: float
    zo: int
    lo: int
    hi: int
    out_dtype: torch.dtype
    big_is_low: bool
    max_bound: float = float("inf")

    @functools.cached_property
    def struct(self) -> _Epilogue:
        """The C struct (built once: it points into this object's tensors, which it keeps alive)."""
        return _Epilogue(self.multiplier.data_ptr(), _ptr(self.fb), _ptr(self.ib), self.rcp, self.mode, self.zo,
                         self.lo, self.hi, int(self.big_is_low), int(self.out_dtype == torch.int8))


def _aligned(nbytes: int, dtype: torch.dtype) -> torch.Tensor:
    raw = torch.empty(nbytes + _ALIGN, dtype=torch.int8)
    shift = (-raw.data_ptr()) % _ALIGN
    return raw[shift:shift + nbytes].view(dtype)


def padded32(v: torch.Tensor) -> torch.Tensor:
    """``v`` with zeros up to a multiple of 32 entries: the kernels read whole blocks of channels."""
    out = torch.zeros(-(-v.numel() // 32) * 32, dtype=v.dtype)
    out[:v.numel()] = v
    return out


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


@dataclass(frozen=True, eq=False)
class NativeConv:
    """One layer's weights packed for ``native_u8s8.c`` (built by ``native_conv``).

    Attributes:
        panels: the packed int8 weights, 64-byte aligned.
        col_sums: (O,) int64 ``sum_k w_jk`` over each output's window (raw codes).
        geometry: (stride, padding, dilation, groups); linear: ((1, 1), (0, 0), (1, 1), 1).
        kernel: (kh, kw); per_group: C/G; out_channels: O; k: kh*kw*C/G; kp: k rounded up to 4.
        depthwise: one input and one output channel per group: the taps-paired kernel
            (``qcal_dw``), else im2col GEMM (``qcal_conv``).
    """

    panels: torch.Tensor
    col_sums: torch.Tensor
    geometry: tuple
    kernel: tuple[int, int]
    per_group: int
    out_channels: int
    k: int
    kp: int
    depthwise: bool = False
    _calls: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def pair_shift(self) -> int:
        """How far FBGEMM's saturation can move an output: each of its (at most kp/2) int16
        pairs by at most 32768."""
        return self.kp // 2 * 32768

    def _call_args(self, shape: tuple[int, ...], za: int, zw: torch.Tensor | None, out_hw: tuple[int, int]):
        """(dims, off, zw32) for one input shape and zero points, built once rather than as a few
        small tensors on every layer call."""
        key = (shape, za, out_hw, None if zw is None else zw.data_ptr(), None if zw is None else zw._version)
        found = self._calls.get(key)
        if found is not None and (zw is None or found[3] is zw):
            return found[:3]
        n, h, w, c = shape
        (sh, sw), (ph, pw), (dh, dw), groups = self.geometry
        oh, ow = out_hw
        if self.depthwise:
            dims = torch.tensor([n, h, w, c, *self.kernel, sh, sw, ph, pw, dh, dw, oh, ow, za], dtype=torch.int32)
        else:
            dims = torch.tensor([n, h, w, c, groups, self.per_group, *self.kernel, sh, sw, ph, pw, dh, dw, oh, ow,
                                 za, self.out_channels // groups, self.k, self.kp], dtype=torch.int32)
        off = -za * self.col_sums
        zw32 = None
        if zw is not None:
            off = off + self.k * za * zw
            zw32 = padded32(zw.to(torch.int32))
        off = padded32(off.to(torch.int32))
        if len(self._calls) > 64:
            self._calls.clear()
        self._calls[key] = (dims, off, zw32, zw)
        return dims, off, zw32

    def __call__(self, x_nhwc: torch.Tensor, za: int, zw: torch.Tensor | None, *, as_float: bool,
                 out_hw: tuple[int, int], epilogue: Epilogue | None = None) -> torch.Tensor:
        """FBGEMM's accumulator (int16 pairs saturating) plus the zero-point terms, (N, H', W', O)
        int32 (float32 if ``as_float``, exact only while every result is under 2^24: the caller
        checks its bound), or with an ``epilogue`` the requantized codes in its ``out_dtype``.

        Args:
            x_nhwc: (N, H, W, C) uint8, contiguous.
            za: the activation zero point (what padded pixels hold).
            zw: (O,) int64 weight zero points, or None when all are 0.
        """
        return self._run(x_nhwc, za, zw, as_float, out_hw, epilogue, exact=False)

    def exact(self, x_nhwc: torch.Tensor, za: int, zw: torch.Tensor | None, *, as_float: bool,
              out_hw: tuple[int, int], epilogue: Epilogue | None = None) -> torch.Tensor:
        """As ``__call__``, with the exact sum: u8 and s8 codes widened to int16 and multiplied in
        int32 pairs (``vpmaddwd``), so no pair saturates, whatever the codes; 1.1-1.25x the
        saturating kernel's time."""
        return self._run(x_nhwc, za, zw, as_float, out_hw, epilogue, exact=True)

    def _run(self, x_nhwc, za, zw, as_float, out_hw, epilogue, *, exact: bool) -> torch.Tensor:
        lib = load()[0]
        n = x_nhwc.shape[0]
        oh, ow = out_hw
        dims, off, zw32 = self._call_args(tuple(x_nhwc.shape), za, zw, out_hw)
        kind = 2 if epilogue is not None else int(as_float)
        dtype = epilogue.out_dtype if epilogue is not None else (torch.float32 if as_float else torch.int32)
        out = torch.empty((n, oh, ow, self.out_channels), dtype=dtype)
        epi = ctypes.byref(epilogue.struct) if epilogue is not None else None
        run = lib.qcal_dw if self.depthwise else lib.qcal_conv
        status = run(x_nhwc.data_ptr(), dims.data_ptr(), self.panels.data_ptr(), off.data_ptr(),
                     _ptr(zw32), out.data_ptr(), kind, epi, torch.get_num_threads(), int(exact))
        if status != 0:
            raise MemoryError("native int8 kernel: out of memory for its working buffers")
        return out

    def bind(self, shape: tuple[int, ...], za: int, zw: torch.Tensor | None, out_hw: tuple[int, int],
             epilogue: Epilogue, *, exact: bool) -> Callable[[torch.Tensor], torch.Tensor]:
        """``call(x_nhwc)``: ``self(x_nhwc, ...)`` (``exact``: ``self.exact``) with this epilogue
        for inputs of this ``shape``, every argument but the input and output prepared now (a
        captured program's layer call: ``qcal.graph.capture``). It runs on the thread count
        torch has now."""
        lib = load()[0]
        dims, off, zw32 = self._call_args(shape, za, zw, out_hw)
        run = lib.qcal_dw if self.depthwise else lib.qcal_conv
        fixed = (dims.data_ptr(), self.panels.data_ptr(), off.data_ptr(), _ptr(zw32))
        tail = (2, ctypes.byref(epilogue.struct), torch.get_num_threads(), int(exact))
        out_shape, dtype = (shape[0], *out_hw, self.out_channels), epilogue.out_dtype
        keep = (dims, off, zw32, epilogue, self)  # what the pointers point into

        def call(x_nhwc: torch.Tensor, _keep=keep) -> torch.Tensor:
            out = torch.empty(out_shape, dtype=dtype)
            if run(x_nhwc.data_ptr(), *fixed, out.data_ptr(), *tail) != 0:
                raise MemoryError("native int8 kernel: out of memory for its working buffers")
            return out

        return call


def requant(acc: torch.Tensor, epilogue: Epilogue, channel_axis: int, *, biased: bool = False,
            sums: torch.Tensor | None = None, zw: torch.Tensor | None = None) -> torch.Tensor | None:
    """``epilogue``'s codes for sums computed elsewhere (``acc``: int32, or float32 holding exact
    integers, with its channels along ``channel_axis``), in ``acc``'s memory format; None where
    its memory does not hold the channels innermost (channels-last conv, or linear).
    ``biased``: ``acc`` is float32 ``y``, the bias already added in float32 (oneDNN's fold), and
    ``epilogue`` has none (mode 0). ``sums`` and ``zw``: ``acc - zw_j * sums`` is requantized,
    the weight zero-point term subtracted in the store (``sums``: float32 window sums per output
    position and group, (N, G, H', W') for a conv or (..., 1) for linear; the caller keeps the
    result and every term inside int32)."""
    if acc.dtype not in (torch.int32, torch.float32) or not available():
        return None
    if biased and (acc.dtype != torch.float32 or epilogue.mode != 0 or sums is not None):
        raise ValueError("a biased accumulator is float32 y and takes an epilogue without bias (mode 0), no sums")
    kind = 2 if biased else int(acc.dtype == torch.float32)
    o = acc.shape[channel_axis]
    conv = acc.dim() == 4 and channel_axis == 1
    if conv and acc.is_contiguous(memory_format=torch.channels_last):
        rows = acc.permute(0, 2, 3, 1)
    elif channel_axis in (-1, acc.dim() - 1) and acc.is_contiguous():
        rows = acc
    else:
        return None
    groups, srows, zw32 = 1, None, None
    if sums is not None:
        groups = sums.shape[1] if conv else 1
        srows = (sums.permute(0, 2, 3, 1) if conv else sums).float().contiguous()
        zw32 = zw.to(torch.int32).reshape(-1).expand(o).contiguous()  # read o wide: no padding
    out = torch.empty(rows.shape, dtype=epilogue.out_dtype)
    load()[0].qcal_requant(rows.data_ptr(), kind, rows.numel() // max(o, 1), o, ctypes.byref(epilogue.struct),
                           out.data_ptr(), torch.get_num_threads(), _ptr(srows), _ptr(zw32), groups)
    return out.permute(0, 3, 1, 2) if rows is not acc else out


def native_conv(w_q: torch.Tensor, geometry: tuple | None) -> NativeConv | None:
    """Pack int8 weights ((O, C/G, kh, kw) conv, or (O, K) linear with ``geometry`` None) for the
    native kernel; None when it is unavailable here or the layer is outside its range."""
    if not available() or w_q.dtype != torch.int8:
        return None
    if geometry is None:
        w_q = w_q[:, :, None, None]
        geometry = ((1, 1), (0, 0), (1, 1), 1)
    o, cg, kh, kw = w_q.shape
    groups = geometry[3]
    k = kh * kw * cg
    if k > MAX_K or o == 0 or k == 0:
        return None
    kp = (k + 3) // 4 * 4
    kg = o // groups
    w = w_q.permute(0, 2, 3, 1).contiguous()  # (O, kh, kw, C/G): im2col's (kh, kw, c) order
    col_sums = w.reshape(o, k).sum(1, dtype=torch.int64)
    if cg == 1 and kg == 1 and groups > 1 and k <= 64:  # depthwise: taps paired per channel
        panels = _aligned((k + 3) // 4 * ((o + 31) // 32) * 128, torch.int8)
        load()[0].qcal_pack_dw(w.data_ptr(), o, k, panels.data_ptr())
        return NativeConv(panels, col_sums, geometry, (kh, kw), cg, o, k, kp, depthwise=True)
    panels = _aligned(groups * ((kg + 15) // 16) * (kp // 4) * 64, torch.int8)
    load()[0].qcal_pack(w.data_ptr(), groups, kg, k, kp, panels.data_ptr())
    return NativeConv(panels, col_sums, geometry, (kh, kw), cg, o, k, kp)


#: torch.histc counts in float32: below this many values every count is exact, as in int32.
HISTC_EXACT = 2**24


def histc(x: torch.Tensor, bins: int, lo: float, hi: float, step: int = 1) -> torch.Tensor:
    """``torch.histc(x[::step], bins, lo, hi)`` for a flat float32 tensor, bit for bit, about 10x
    faster here (ATen's loop takes ~12 ns a value on this CPU); torch.histc itself where the
    native kernel is unavailable, ``lo < hi`` fails (torch widens a single value's range), or
    so many values are counted that torch's float32 counts could stop being exact.

    Args:
        x: 1-D float32, contiguous.
        lo, hi: float32 values (as Python floats): the outer bin edges.
    """
    n = -(-x.numel() // step)
    lib = load()[0]
    if (lib is None or not lo < hi or n >= HISTC_EXACT or x.dtype != torch.float32 or x.dim() != 1
            or not x.is_contiguous()):
        return torch.histc(x[::step] if step > 1 else x, bins, min=lo, max=hi)
    counts = torch.empty(bins, dtype=torch.int32)
    lib.qcal_histc(x.data_ptr(), n, step, bins, lo, hi, counts.data_ptr())
    return counts.float()


def max_pool2d(x_q: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
               dilation: tuple[int, int], out_hw: tuple[int, int]) -> torch.Tensor | None:
    """The window maximum of (N, C, H, W) uint8/int8 codes over the pixels inside the image
    (padding ignored, as torch's quantized max_pool2d), channels_last; None where the native
    library is unavailable. ``out_hw``: the output size (the caller's, ceil_mode included)."""
    if x_q.dim() != 4:
        return None
    call = max_pooler(tuple(x_q.shape), x_q.dtype, kernel, stride, padding, dilation, out_hw)
    return None if call is None else call(x_q)


def max_pooler(shape: tuple[int, ...], dtype: torch.dtype, kernel: tuple[int, int], stride: tuple[int, int],
               padding: tuple[int, int], dilation: tuple[int, int],
               out_hw: tuple[int, int]) -> Callable[[torch.Tensor], torch.Tensor | None] | None:
    """``max_pool2d(x_q, ...)`` as a call of ``x_q`` alone for codes of this (N, C, H, W)
    ``shape`` and ``dtype``, its arguments prepared once; None where the native library is
    unavailable. The call answers None where the kernel fails (as ``max_pool2d``)."""
    lib = load()[0]
    if lib is None or len(shape) != 4 or dtype not in (torch.uint8, torch.int8):
        return None
    n, c, h, w = shape
    oh, ow = out_hw
    dims = torch.tensor([n, h, w, c, *kernel, *stride, *padding, *dilation, oh, ow, int(dtype == torch.int8)],
                        dtype=torch.int32)
    run, at = lib.qcal_maxpool, dims.data_ptr()

    def call(x_q: torch.Tensor, _dims=dims) -> torch.Tensor | None:
        nhwc = x_q.permute(0, 2, 3, 1).contiguous()
        out = torch.empty((n, oh, ow, c), dtype=dtype)
        if run(nhwc.data_ptr(), at, out.data_ptr(), torch.get_num_threads()) != 0:
            return None
        return out.permute(0, 3, 1, 2)

    return call


def pair_lookup(a: torch.Tensor, b: torch.Tensor, table: torch.Tensor) -> torch.Tensor | None:
    """``table[a * 256 + b]`` for flat, contiguous uint8 (or int8: codes offset to 0..255) code
    tensors of one length and a 65,536-entry table of their dtype, in one pass; None where the
    native library is unavailable."""
    lib = load()[0]
    if lib is None or not (a.dtype == b.dtype == table.dtype) or a.dtype not in (torch.uint8, torch.int8):
        return None
    a, b, table = a.contiguous(), b.contiguous(), table.contiguous()  # read through raw pointers
    out = torch.empty(a.numel(), dtype=a.dtype)
    flip = 0x80 if a.dtype == torch.int8 else 0
    lib.qcal_pair_lookup(a.data_ptr(), b.data_ptr(), a.numel(), table.data_ptr(), flip, out.data_ptr(),
                         torch.get_num_threads())
    return out


def quantize(x: torch.Tensor, scale: float, zero_point: int, dtype: torch.dtype) -> torch.Tensor | None:
    """torch's per-tensor quantize of float32 ``x`` (``rint(fma(x, f32(1/f32(scale)), zp))``,
    clamped to ``dtype``'s range, ``qcal.qparams.quantize``'s fused rule) in one pass, in
    ``x``'s memory format; None where the native library is unavailable."""
    run = quantizer(scale, zero_point, dtype) if x.dtype == torch.float32 else None
    return None if run is None else run(x)


def quantizer(scale: float, zero_point: int, dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``quantize(x, scale, zero_point, dtype)`` as a call of ``x`` alone (float32), its numbers
    prepared once; None where the native library is unavailable."""
    lib = load()[0]
    if lib is None or dtype not in (torch.uint8, torch.int8):
        return None
    inv = float(1.0 / torch.tensor(scale, dtype=torch.float32))
    info, zp, signed, run = torch.iinfo(dtype), float(zero_point), int(dtype == torch.int8), lib.qcal_quantize

    def call(x: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
            memory_format=torch.channels_last) else torch.contiguous_format
        x = x.contiguous(memory_format=fmt)
        out = torch.empty_like(x, dtype=dtype, memory_format=fmt)
        run(x.data_ptr(), x.numel(), inv, zp, info.min, info.max, out.data_ptr(), signed, torch.get_num_threads())
        return out

    return call
