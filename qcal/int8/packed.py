"""Prepacked integer conv2d and linear layers: the weight side prepared once, called many times.

A layer runs in three steps, each explicit:
1. the exact int32 accumulator ``acc = sum_k (a_k - za)(w_jk - zw_j)`` (``accumulate.py``);
2. under fbgemm, the int16 pair saturation its kernel would add on this CPU
   (``saturation.py``; none when every activation is <= 127);
3. the backend's requantization (``requant.py``).

``pack_conv2d`` / ``pack_linear`` prepare the weight side once (centred weights, oneDNN
prepacks, requant numbers per (input scale, output scale)); ``conv2d`` and ``linear`` are
the one-shot forms. Shapes: conv (N, C, H, W) -> (N, O, H', W'); linear (..., K) -> (..., O).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from qcal.int8.accumulate import Accumulator, Method
from qcal.int8.isa import InstructionSet
from qcal.int8.onednn import x86_uses_onednn
from qcal.int8.ort import ort_saturates
from qcal.int8.requant import Requant, output_range, requant_multipliers, requantize
from qcal.int8.saturation import (
    ConvPath,
    fbgemm_conv_path,
    fbgemm_saturates,
    pair_saturation_conv,
    pair_saturation_linear,
)
from qcal.schemes import Backend, check_backend

__all__ = ["KernelResult", "PackedConv2d", "PackedLinear", "pack_conv2d", "pack_linear"]

_TORCH_BACKENDS = ("fbgemm", "qnnpack", "x86")  # torch's engines: uint8 activations, int8 weights


@dataclass(frozen=True, eq=False)
class KernelResult:
    """One layer call, with everything the dashboard shows.

    Attributes:
        out: the quantized output (uint8 or int8).
        acc: int32 accumulator, shaped like ``out``, as the backend's kernel computed it
            (including FBGEMM's pair saturation when it applies).
        saturated_pairs: how many int16 pair sums saturated (0 when not saturating).
        requant: the requantization numbers used.
    """

    out: torch.Tensor
    acc: torch.Tensor
    saturated_pairs: int
    requant: Requant


def _scalar(v, name: str, kind: type) -> float | int:
    t = torch.as_tensor(v)
    if t.numel() != 1:
        raise ValueError(f"{name} must be a single number, got {t.numel()} values")
    return kind(t.item())


def _pair(v, name: str) -> tuple[int, int]:
    t = (v, v) if isinstance(v, int) else tuple(int(i) for i in v)
    if len(t) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return t


def _out_dtype(out_zero_point) -> torch.dtype:
    if isinstance(out_zero_point, torch.Tensor) and out_zero_point.dtype in (torch.uint8, torch.int8):
        return out_zero_point.dtype
    return torch.uint8


def _check_x(x_q: torch.Tensor, backend: str) -> None:
    allowed = (torch.uint8,) if backend in _TORCH_BACKENDS else (torch.uint8, torch.int8)
    if x_q.dtype not in allowed:
        names = " or ".join(str(d) for d in allowed)
        raise TypeError(f"x_q has dtype {x_q.dtype}; backend {backend!r} takes {names} activations")


def _weights(w_q, w_scale, w_zero_point, bias, backend):
    allowed = (torch.int8,) if backend in _TORCH_BACKENDS else (torch.int8, torch.uint8)
    if not isinstance(w_q, torch.Tensor) or w_q.dtype not in allowed:
        names = " or ".join(str(d) for d in allowed)
        got = getattr(w_q, "dtype", type(w_q).__name__)
        raise TypeError(f"w_q has dtype {got}; backend {backend!r} takes {names} weights")
    o = w_q.shape[0]
    if o == 0 or w_q.numel() == 0:  # torch's prepack crashes the process on such weights
        raise ValueError(f"w_q has shape {tuple(w_q.shape)}: weights need at least one output channel and input")
    zp = torch.as_tensor(w_zero_point).reshape(-1).to(torch.int64)
    if zp.numel() not in (1, o):
        raise ValueError(f"w_zero_point has {zp.numel()} entries; expected 1 or {o} (one per output channel)")
    info = torch.iinfo(w_q.dtype)
    if bool(((zp < info.min) | (zp > info.max)).any()):
        raise ValueError(f"w_zero_point {zp.tolist()[:8]} outside the {w_q.dtype} range")
    scale = torch.as_tensor(w_scale)
    if scale.dim() == 1 and scale.numel() != o:
        raise ValueError(f"w_scale has {scale.numel()} entries; expected {o} (one per output channel)")
    if scale.dim() > 1:
        raise ValueError(f"w_scale must be a number or a 1-D tensor, got shape {tuple(scale.shape)}")
    if bias is not None:
        bias = torch.as_tensor(bias)
        if bias.dtype == torch.float64:
            bias = bias.float()
        if bias.dtype not in (torch.float32, torch.int32) or bias.shape != (o,):
            raise ValueError(f"bias must be float32 or int32 of shape ({o},), got {bias.dtype} {tuple(bias.shape)}")
    return zp.expand(o).clone(), w_scale, bias


@dataclass(frozen=True, eq=False)
class _Packed:
    """Weight-side state shared by conv2d and linear (see ``pack_conv2d``)."""

    backend: str
    w_q: torch.Tensor
    w_scale: torch.Tensor | float
    w_zero_point: torch.Tensor
    bias: torch.Tensor | None
    accumulator: Accumulator
    _requants: dict = field(default_factory=dict, repr=False)

    def requant(self, x_scale: float, out_scale: float, flavour: str | None = None) -> Requant:
        """The requantization numbers for one (input scale, output scale) pair (cached).

        ``flavour``: the arithmetic that runs (x86: "fbgemm" or "onednn"); None: the backend's.
        """
        flavour = flavour or self.backend
        key = (x_scale, out_scale, flavour)
        if key not in self._requants:
            self._requants[key] = requant_multipliers(
                x_scale, self.w_scale, out_scale, self.bias, backend=flavour
            )
        return self._requants[key]

    def flavour(self, isa: InstructionSet | None = None) -> str:
        """The requantization that runs: the backend's, or for x86 "fbgemm" / "onednn" (``onednn.py``)."""
        if self.backend != "x86":
            return self.backend
        groups = getattr(self, "geometry", None)
        return "onednn" if groups and x86_uses_onednn(self.w_zero_point, groups[3], isa) else "fbgemm"

    def _run(self, x_q, x_scale, x_zero_point, out_scale, out_zero_point, relu, saturate, detailed, axis,
             isa=None):
        _check_x(x_q, self.backend)
        sa, so = _scalar(x_scale, "x_scale", float), _scalar(out_scale, "out_scale", float)
        za, zo = _scalar(x_zero_point, "x_zero_point", int), _scalar(out_zero_point, "out_zero_point", int)
        info = torch.iinfo(x_q.dtype)
        if not info.min <= za <= info.max:
            raise ValueError(f"x_zero_point {za} outside the {x_q.dtype} range [{info.min}, {info.max}]")
        rq = self.requant(sa, so, self.flavour(isa))
        out_dtype = _out_dtype(out_zero_point)
        output_range(out_dtype, zo, relu)  # validates zo even when there is nothing to compute
        if x_q.numel() == 0:  # an empty batch: torch's engines return an empty output too
            out = torch.empty(self._out_shape(x_q), dtype=out_dtype)
            if not detailed:
                return out
            return KernelResult(out, torch.empty(out.shape, dtype=torch.int32), 0, rq)
        sat = self._saturates(rq, saturate, isa) and self._can_saturate(x_q, za)
        folded = None if detailed or sat else self._fold_bias(x_q, za, rq)
        if folded is not None:  # bias already added by oneDNN, exactly as the backend adds it
            return requantize(folded[0], self._no_bias(rq), zo, relu=relu, out_dtype=out_dtype,
                              channel_axis=axis, bound=folded[1], consume=True)
        acc, bound = self.accumulator(x_q, za)
        pairs = 0
        if sat:
            delta, pairs = self._saturation(x_q, za)
            if pairs:
                acc, bound = acc.to(torch.int32) + delta, None
        out = requantize(acc, rq, zo, relu=relu, out_dtype=out_dtype, channel_axis=axis, bound=bound,
                         consume=not detailed)
        if not detailed:
            return out
        return KernelResult(out, acc.to(torch.int32), pairs, rq)

    def _fold_bias(self, x_q, za, rq: Requant):
        """oneDNN's float bias add where it equals the backend's own (see ``with_bias``)."""
        if rq.backend not in ("fbgemm", "qnnpack", "ort"):  # ort adds its int32 bias like qnnpack
            return None
        if rq.bias_float is not None and rq.per_channel:
            term = rq.bias_float / rq.act_times_w_scale  # fbgemm: f32(b_j / ats_j), added in float32
        elif rq.bias_int32 is not None:
            term = rq.bias_int32.float()  # exact: f32(acc + bq) is one rounding of an exact sum
            if float(rq.bias_int32.abs().max()) > 2**24:
                return None
        else:
            return None
        return self.accumulator.with_bias(x_q, za, term.expand(self.w_q.shape[0]))

    def _saturates(self, rq: Requant, saturate: bool | None, isa) -> bool:
        """Whether this layer's kernel adds int16 pairs with saturation (FBGEMM's or MLAS's U8S8)."""
        if rq.backend == "fbgemm":
            return fbgemm_saturates(self._family(isa), saturate, isa)
        if rq.backend == "ort" and self.w_q.dtype == torch.int8:  # U8U8 kernels widen first: exact
            return ort_saturates(self.ort_path, saturate)
        return False

    @property
    def ort_path(self) -> str:
        """MLAS's kernel family: "depthwise" (one input and one output channel per group) or "gemm"."""
        geometry = getattr(self, "geometry", None)
        depthwise = geometry is not None and self.w_q.shape[1] == 1 and self.w_q.shape[0] == geometry[3]
        return "depthwise" if depthwise else "gemm"

    def _family(self, isa) -> ConvPath:
        return self.path  # linear: always FBGEMM's GEMM

    @staticmethod
    def _no_bias(rq: Requant) -> Requant:
        return dataclasses.replace(rq, bias_int32=None, bias_float=None)

    def _can_saturate(self, x_q: torch.Tensor, za: int) -> bool:
        # |a0*w0 + a1*w1| <= 2 * max a * max |w|: below 2^15 no pair can saturate. Padded
        # pixels hold za, so it counts too when the layer pads.
        padded = getattr(self, "geometry", None) is not None and any(self.geometry[1])
        amax = max(int(x_q.max()), za if padded else 0)
        return 2 * amax * self.accumulator.pair_max > 32767  # max |w|, computed once per pack


@dataclass(frozen=True, eq=False)
class PackedConv2d(_Packed):
    """A prepacked conv2d; call it with activations (see ``pack_conv2d``)."""

    geometry: tuple = ((1, 1), (0, 0), (1, 1), 1)
    path: ConvPath = "gemm"

    @torch.no_grad()
    def __call__(
        self,
        x_q: torch.Tensor,
        x_scale: float,
        x_zero_point: int,
        out_scale: float,
        out_zero_point: int | torch.Tensor,
        *,
        relu: bool = False,
        saturate: bool | None = None,
        detailed: bool = False,
        isa: InstructionSet | None = None,
    ) -> torch.Tensor | KernelResult:
        """Run the layer: (N, C, H, W) codes -> (N, O, H', W') channels_last codes (or a KernelResult).

        ``isa`` names the x86 CPU whose FBGEMM kernels to emulate (None: ``assumed_cpu()``).
        """
        if x_q.dim() != 4 or x_q.shape[1] != self.w_q.shape[1] * self.geometry[3]:
            raise ValueError(
                f"x_q shape {tuple(x_q.shape)} does not fit weights {tuple(self.w_q.shape)} with groups={self.geometry[3]}"
            )
        x_q = self._fit_image(x_q, x_zero_point)
        res = self._run(x_q, x_scale, x_zero_point, out_scale, out_zero_point, relu, saturate, detailed, 1, isa)
        # torch's quantized conv2d returns channels_last; later ops (pools) pick kernels by it
        if isinstance(res, KernelResult):
            return dataclasses.replace(res, out=res.out.contiguous(memory_format=torch.channels_last))
        return res.contiguous(memory_format=torch.channels_last)

    def _family(self, isa) -> ConvPath:
        return self.path if isa is None else fbgemm_conv_path(self.w_q.shape[1] * self.geometry[3],
                                                              tuple(self.w_q.shape), self.geometry, isa)

    def _saturation(self, x_q, za):
        return pair_saturation_conv(x_q, za, self.w_q, self.geometry)

    def _out_shape(self, x_q: torch.Tensor, *, truncate: bool = False) -> tuple[int, ...]:
        """(N, O, H', W'); ``truncate``: torch's C division, which rounds a negative
        numerator toward zero (a kernel overhanging the image by less than a stride)."""
        out = [x_q.shape[0], self.w_q.shape[0]]
        for i in range(2):
            (s, p, d), k = (g[i] for g in self.geometry[:3]), self.w_q.shape[2 + i]
            num = x_q.shape[2 + i] + 2 * p - d * (k - 1) - 1
            out.append(max((int(num / s) if truncate else num // s) + 1, 0))
        return tuple(out)

    def _fit_image(self, x_q: torch.Tensor, x_zero_point) -> torch.Tensor:
        """``x_q`` as the backend reads it, or ValueError where the backend refuses it.

        torch's engines answer an empty batch (N = 0) with an empty output and refuse an
        empty image or an output with no rows or columns. FBGEMM sizes the output with C's
        truncating division, so a kernel that overhangs the last row or column by less than
        a stride still gives an output, read from pixels past the image that its im2col
        fills with the zero point; QNNPACK crashes the process there (segfault), qcal refuses.
        """
        if x_q.shape[0] == 0:
            return x_q
        if x_q.shape[2] == 0 or x_q.shape[3] == 0:
            raise ValueError(
                f"x_q has an empty image {tuple(x_q.shape[2:])}: input dimensions must be non-zero "
                f"(QNNPACK's check; qcal refuses it on every backend)"
            )
        floor, trunc = self._out_shape(x_q), self._out_shape(x_q, truncate=True)
        if min(floor[2:]) > 0:
            return x_q
        if self.backend == "fbgemm" and min(trunc[2:]) > 0:
            (sh, sw), _, (dh, dw), _ = self.geometry
            kh, kw = self.w_q.shape[2:]
            need_h = (trunc[2] - 1) * sh + dh * (kh - 1) + 1 - x_q.shape[2] - 2 * self.geometry[1][0]
            need_w = (trunc[3] - 1) * sw + dw * (kw - 1) + 1 - x_q.shape[3] - 2 * self.geometry[1][1]
            za = _scalar(x_zero_point, "x_zero_point", int)
            return torch.nn.functional.pad(x_q, (0, max(need_w, 0), 0, max(need_h, 0)), value=za)
        (ph, pw), (dh, dw) = self.geometry[1], self.geometry[2]
        crash = " (torch's qnnpack crashes on this layer)" if min(trunc[2:]) > 0 else ""
        raise ValueError(
            f"backend {self.backend!r} refuses this conv2d: each dimension of output tensor "
            f"should be greater than 0 (input {tuple(x_q.shape[2:])}, padding {(ph, pw)}, "
            f"kernel {tuple(self.w_q.shape[2:])}, dilation {(dh, dw)}: the kernel does not "
            f"fit the padded input){crash}"
        )


@dataclass(frozen=True, eq=False)
class PackedLinear(_Packed):
    """A prepacked linear layer; call it with activations (see ``pack_linear``)."""

    path: ConvPath = "gemm"

    @torch.no_grad()
    def __call__(
        self,
        x_q: torch.Tensor,
        x_scale: float,
        x_zero_point: int,
        out_scale: float,
        out_zero_point: int | torch.Tensor,
        *,
        relu: bool = False,
        saturate: bool | None = None,
        detailed: bool = False,
        isa: InstructionSet | None = None,
    ) -> torch.Tensor | KernelResult:
        """Run the layer: (..., K) codes -> (..., O) codes (a KernelResult if detailed); ``isa`` as for conv."""
        if x_q.dim() < 2 and self.backend in _TORCH_BACKENDS:
            raise ValueError(f"x_q has shape {tuple(x_q.shape)}; backend {self.backend!r} refuses "
                             "linear inputs of rank < 2 (torch: input tensor rank should be >= 2)")
        if x_q.shape[-1] != self.w_q.shape[1]:
            raise ValueError(f"x_q has {x_q.shape[-1]} features, weights expect {self.w_q.shape[1]}")
        return self._run(x_q, x_scale, x_zero_point, out_scale, out_zero_point, relu, saturate, detailed, -1, isa)

    def _saturation(self, x_q, za):
        return pair_saturation_linear(x_q, self.w_q)

    def _out_shape(self, x_q: torch.Tensor) -> tuple[int, ...]:
        return (*x_q.shape[:-1], self.w_q.shape[0])


@torch.no_grad()
def pack_conv2d(
    w_q: torch.Tensor,
    w_scale: float | torch.Tensor,
    w_zero_point: int | torch.Tensor,
    bias: torch.Tensor | None,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    backend: Backend = "fbgemm",
    method: Method = "auto",
) -> PackedConv2d:
    """Prepare a conv2d's weight side once, for many calls.

    Args:
        w_q: (O, C/groups, kh, kw) int8 codes (uint8 allowed for onnx/q31).
        w_scale: a number (per tensor) or 1-D (O,) tensor (per channel).
        w_zero_point: a number or (O,) tensor.
        bias: float32 (O,) (the backend quantizes it its own way), int32 (O,) (used as is) or None.
        stride, padding, dilation, groups: as ``torch.nn.functional.conv2d`` (zero padding
            means padding with the activation zero point).
        backend: "fbgemm" | "qnnpack" | "onnx" | "q31" | "x86" (torch's default engine: FBGEMM,
            or oneDNN for symmetric convs on AVX512-VNNI CPUs, see ``onednn.py``).
        method: accumulator engine, "auto" | "float" | "onednn" (see ``accumulate.py``).
    Returns:
        A frozen ``PackedConv2d``: ``packed(x_q, x_scale, x_zero_point, out_scale,
        out_zero_point, *, relu=False, saturate=None, detailed=False)``.
    """
    check_backend(backend)
    if w_q.dim() != 4:
        raise ValueError(f"conv2d weights must be 4-D (O, C/groups, kh, kw), got shape {tuple(w_q.shape)}")
    zp, w_scale, bias = _weights(w_q, w_scale, w_zero_point, bias, backend)
    if groups < 1 or w_q.shape[0] % groups:
        raise ValueError(f"groups={groups} must be >= 1 and divide the {w_q.shape[0]} output channels")
    geometry = (_pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation"), int(groups))
    # torch crashes on stride 0, answers dilation 0 and negative padding with meaningless
    # shapes (or an internal assert under qnnpack): qcal refuses all three
    for name, values, low in (("stride", geometry[0], 1), ("padding", geometry[1], 0), ("dilation", geometry[2], 1)):
        if min(values) < low:
            raise ValueError(f"{name} {values} must be >= {low} in both dimensions")
    acc = Accumulator(w_q, zp, geometry, method)
    path = fbgemm_conv_path(w_q.shape[1] * groups, tuple(w_q.shape), geometry)
    return PackedConv2d(backend, w_q, w_scale, zp, bias, acc, geometry=geometry, path=path)


@torch.no_grad()
def pack_linear(
    w_q: torch.Tensor,
    w_scale: float | torch.Tensor,
    w_zero_point: int | torch.Tensor,
    bias: torch.Tensor | None,
    *,
    backend: Backend = "fbgemm",
    method: Method = "auto",
) -> PackedLinear:
    """Prepare a linear layer's weight side once (w_q: (O, K)); see ``pack_conv2d``."""
    check_backend(backend)
    if w_q.dim() != 2:
        raise ValueError(f"linear weights must be 2-D (O, K), got shape {tuple(w_q.shape)}")
    zp, w_scale, bias = _weights(w_q, w_scale, w_zero_point, bias, backend)
    return PackedLinear(backend, w_q, w_scale, zp, bias, Accumulator(w_q, zp, None, method))
