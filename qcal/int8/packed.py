"""Prepacked integer conv2d and linear layers: the weight side prepared once, called many times.

A layer runs in three steps, each explicit:
1. the exact int32 accumulator ``acc = sum_k (a_k - za)(w_jk - zw_j)`` (``accumulate.py``);
2. under fbgemm, the int16 pair saturation its kernel would add on this CPU
   (``saturation.py``; none when every activation is <= 127);
3. the backend's requantization (``requant.py``).

``pack_conv2d`` / ``pack_linear`` prepare the weight side once (centred weights, oneDNN
prepacks, requant numbers per (input scale, output scale)); ``conv2d`` and ``linear`` are
the one-shot forms. Shapes: conv (N, C, H, W) -> (N, O, H', W'); linear (..., K) -> (..., O).
What each layer accepts, and the conv shapes a backend refuses, is checked in ``layer_checks.py``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from qcal.int8.backends.onednn import x86_uses_onednn
from qcal.int8.backends.ort import ort_saturates
from qcal.int8.common.accumulate import F32_EXACT, Accumulator, Method
from qcal.int8.common.layer_checks import (
    check_activations,
    check_linear_input,
    checked_weights,
    conv_geometry,
    conv_out_shape,
    fit_image,
    out_dtype,
    scalar,
)
from qcal.int8.common.pair_sites import PairPlan, pair_plan
from qcal.int8.common.requant import Requant, output_range, requant_multipliers, requantize
from qcal.int8.common.saturation import (
    ConvPath,
    fbgemm_conv_path,
    fbgemm_saturates,
    pair_saturation_conv,
    pair_saturation_linear,
)
from qcal.int8.cpu.isa import InstructionSet
from qcal.int8.native import NativeConv
from qcal.int8.native.route import NativeRoute
from qcal.schemes import Backend, check_backend

__all__ = ["KernelResult", "PackedConv2d", "PackedLinear", "pack_conv2d", "pack_linear"]

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


def _aminmax(x: torch.Tensor) -> tuple[int, int]:
    """(min, max) of ``x``; over its flat memory when it is dense (torch's reduction over a
    channels_last tensor walks it ~50x slower)."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        x = x.permute(0, 2, 3, 1)
    lo, hi = torch.aminmax(x.reshape(-1) if x.is_contiguous() else x)
    return int(lo), int(hi)


@dataclass(frozen=True, eq=False)
class _Packed(NativeRoute):
    """Weight-side state shared by conv2d and linear (see ``pack_conv2d``)."""

    backend: str
    w_q: torch.Tensor
    w_scale: torch.Tensor | float
    w_zero_point: torch.Tensor
    bias: torch.Tensor | None
    accumulator: Accumulator
    _requants: dict = field(default_factory=dict, repr=False)
    _pair_plans: dict = field(default_factory=dict, repr=False)
    _natives: dict = field(default_factory=dict, repr=False)

    def pair_plan(self) -> PairPlan:
        """The weight side of the pair-saturation emulation (``pair_sites.py``), built once."""
        if not self._pair_plans:
            self._pair_plans[None] = pair_plan(self.w_q, getattr(self, "geometry", None))
        return self._pair_plans[None]

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

    _channel_axis = -1  # where the output channel sits: (..., O) unless a subclass says otherwise

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
        """Run the layer on activation codes (a ``KernelResult`` if ``detailed``).

        conv2d: (N, C, H, W) -> (N, O, H', W') channels_last codes; linear: (..., K) -> (..., O).
        ``isa`` names the x86 CPU whose FBGEMM kernels to emulate (None: ``assumed_cpu()``).
        """
        x_q = self._fit(x_q, isa)
        res = self._run(x_q, x_scale, x_zero_point, out_scale, out_zero_point, relu, saturate, detailed,
                        self._channel_axis, isa)
        if isinstance(res, KernelResult):
            return dataclasses.replace(res, out=self._finish(res.out))
        return self._finish(res)

    @staticmethod
    def _finish(out: torch.Tensor) -> torch.Tensor:
        return out

    def flavour(self, isa: InstructionSet | None = None) -> str:
        """The requantization that runs: the backend's, or for x86 "fbgemm" / "onednn" (``onednn.py``)."""
        if self.backend != "x86":
            return self.backend
        groups = getattr(self, "geometry", None)
        return "onednn" if groups and x86_uses_onednn(self.w_zero_point, groups[3], isa) else "fbgemm"

    def _run(self, x_q, x_scale, x_zero_point, out_scale, out_zero_point, relu, saturate, detailed, axis,
             isa=None):
        check_activations(x_q, self.backend)
        sa, so = scalar(x_scale, "x_scale", float), scalar(out_scale, "out_scale", float)
        za, zo = scalar(x_zero_point, "x_zero_point", int), scalar(out_zero_point, "out_zero_point", int)
        info = torch.iinfo(x_q.dtype)
        if not info.min <= za <= info.max:
            raise ValueError(f"x_zero_point {za} outside the {x_q.dtype} range [{info.min}, {info.max}]")
        rq = self.requant(sa, so, self.flavour(isa))
        dtype = out_dtype(out_zero_point)
        output_range(dtype, zo, relu)  # validates zo even when there is nothing to compute
        if x_q.numel() == 0 or 0 in self._out_shape(x_q):  # torch returns an empty output too
            out = torch.empty(self._out_shape(x_q), dtype=dtype)
            if not detailed:
                return out
            return KernelResult(out, torch.empty(out.shape, dtype=torch.int32), 0, rq)
        if not detailed:
            out = self._native_whatever_the_codes(x_q, za, zo, relu, dtype, rq, saturate, isa)
            if out is not None:
                return out
        lo, hi = _aminmax(x_q)
        sat = self._saturates(rq, saturate, isa) and self._can_saturate(max(abs(lo), hi), za)
        plan_first = not (detailed or self._onednn_fast())  # without AMX: before oneDNN's fold (route._onednn_sums)
        native = self._native_plan(x_q, za, (lo, hi), sat, rq) if plan_first else None
        folded = None if detailed or sat or native is not None else self._fold_bias(x_q, za, rq, (lo, hi))
        if folded is not None:  # bias already added by oneDNN, exactly as the backend adds it
            plain = self._no_bias_of(rq)
            out = self._native_store(folded[0], folded[1], plain, zo, relu, dtype, axis, biased=True)
            if out is not None:
                return out
            return requantize(folded[0], plain, zo, relu=relu, out_dtype=dtype,
                              channel_axis=axis, bound=folded[1], consume=True)
        if not (plan_first or detailed):
            native = self._native_plan(x_q, za, (lo, hi), sat, rq)
        if native is not None:  # FBGEMM's own arithmetic (or the exact sum) in one native pass
            packed, zw, bound = native
            epilogue = self._epilogue(rq, zo, relu, dtype)
            if epilogue is not None and bound <= epilogue.max_bound:  # and the requantization fused into its store
                return self._native_call(packed, x_q, za, zw, False, epilogue)
            acc = self._native_call(packed, x_q, za, zw, bound <= F32_EXACT)
            return requantize(acc, rq, zo, relu=relu, out_dtype=dtype, channel_axis=axis, bound=bound, consume=True)
        if not (detailed or sat):  # oneDNN's sums on the raw weights, the zero points in the store
            out = self._native_zero_point(x_q, za, (lo, hi), rq, zo, relu, dtype, axis)
            if out is not None:
                return out
        acc, bound = self.accumulator(x_q, za, (lo, hi))
        if not (detailed or sat):  # exact sums from oneDNN or the float engine: the native store
            out = self._native_store(acc, bound, rq, zo, relu, dtype, axis)
            if out is not None:
                return out
        pairs = 0
        if sat:
            acc, pairs = self._saturated(acc, bound + self._pair_shift(), x_q, za)
            if pairs:
                bound += self._pair_shift()
        out = requantize(acc, rq, zo, relu=relu, out_dtype=dtype, channel_axis=axis, bound=bound,
                         consume=not detailed)
        if not detailed:
            return out
        return KernelResult(out, acc.to(torch.int32), pairs, rq)

    def _fold_bias(self, x_q, za, rq: Requant, x_range: tuple[int, int]):
        """oneDNN's float bias add where it equals the backend's own (see ``with_bias``)."""
        if rq.backend not in ("fbgemm", "qnnpack", "ort", "xnnpack"):  # ort, xnnpack add an int32 bias like qnnpack
            return None
        if rq.bias_float is not None and rq.per_channel:
            term = rq.bias_float / rq.act_times_w_scale  # fbgemm: f32(b_j / ats_j), added in float32
        elif rq.bias_int32 is not None:
            term = rq.bias_int32.float()  # exact: f32(acc + bq) is one rounding of an exact sum
            if float(rq.bias_int32.abs().max()) > 2**24:
                return None
        else:
            return None
        return self.accumulator.with_bias(x_q, za, term.expand(self.w_q.shape[0]), x_range)

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

    def _no_bias_of(self, rq: Requant) -> Requant:
        """``_no_bias(rq)``, one object per ``rq`` (the fused store is cached by identity)."""
        key = ("no bias", rq)
        if key not in self._natives:
            self._natives[key] = self._no_bias(rq)
        return self._natives[key]

    def _can_saturate(self, amax: int, za: int) -> bool:
        # |a0*w0 + a1*w1| <= 2 * max |a| * max |w|: below 2^15 no pair can saturate. Padded
        # pixels hold za, so it counts too when the layer pads.
        padded = getattr(self, "geometry", None) is not None and any(self.geometry[1])
        amax = max(amax, abs(za) if padded else 0)
        return 2 * amax * self.accumulator.pair_max > 32767  # max |w|, computed once per pack

    def _pair_shift(self) -> int:
        """How far saturation can move an output: each of its P pairs by at most 32768."""
        return self.pair_plan().w_pairs.shape[2] * 32768


@dataclass(frozen=True, eq=False)
class PackedConv2d(_Packed):
    """A prepacked conv2d; call it with activations (see ``pack_conv2d``)."""

    geometry: tuple = ((1, 1), (0, 0), (1, 1), 1)
    path: ConvPath = "gemm"

    _channel_axis = 1  # (N, O, H', W')

    def _fit(self, x_q: torch.Tensor, isa: InstructionSet | None = None) -> torch.Tensor:
        return fit_image(x_q, self.w_q, self.geometry, self.backend, onednn=self.flavour(isa) == "onednn")

    @staticmethod
    def _finish(out: torch.Tensor) -> torch.Tensor:
        # torch's quantized conv2d returns channels_last; later ops (pools) pick kernels by it
        return out.contiguous(memory_format=torch.channels_last)

    def _family(self, isa) -> ConvPath:
        return self.path if isa is None else fbgemm_conv_path(self.w_q.shape[1] * self.geometry[3],
                                                              tuple(self.w_q.shape), self.geometry, isa)

    def _saturated(self, acc, bound, x_q, za):
        # the delta is added in place: in float32 while every partial sum stays exact there
        # (|acc| plus any part of the delta under 2^24), else in int32
        in_float = acc.dtype == torch.float32 and bound <= F32_EXACT
        if not (in_float and acc.is_contiguous(memory_format=torch.channels_last)):
            acc = acc.to(torch.float32 if in_float else torch.int32, memory_format=torch.channels_last)
        return pair_saturation_conv(x_q, za, self.w_q, self.geometry, self.pair_plan(), out=acc)

    def _out_shape(self, x_q: torch.Tensor) -> tuple[int, ...]:
        # torch's sizes (C's truncating division); fit_image refused the shapes where they part from floor's
        return conv_out_shape(x_q.shape, self.w_q.shape, self.geometry, truncate=True)

    def _native_call(self, packed: NativeConv, x_q, za, zw, as_float: bool, epilogue=None) -> torch.Tensor:
        out_hw = tuple(self._out_shape(x_q)[2:])
        acc = packed(x_q.permute(0, 2, 3, 1).contiguous(), za, zw, as_float=as_float, out_hw=out_hw,
                     epilogue=epilogue)
        return acc.permute(0, 3, 1, 2)  # (N, O, H', W') channels_last, as the float engine's


@dataclass(frozen=True, eq=False)
class PackedLinear(_Packed):
    """A prepacked linear layer; call it with activations (see ``pack_linear``)."""

    path: ConvPath = "gemm"

    def _fit(self, x_q: torch.Tensor, isa: InstructionSet | None = None) -> torch.Tensor:
        check_linear_input(x_q, self.w_q, self.backend)
        return x_q

    def _saturated(self, acc, bound, x_q, za):
        delta, pairs = pair_saturation_linear(x_q, self.w_q, self.pair_plan())
        return (acc.to(torch.int32) + delta if pairs else acc), pairs

    def _out_shape(self, x_q: torch.Tensor) -> tuple[int, ...]:
        return (*x_q.shape[:-1], self.w_q.shape[0])

    def _native_call(self, packed: NativeConv, x_q, za, zw, as_float: bool, epilogue=None) -> torch.Tensor:
        rows = x_q.reshape(-1, 1, 1, x_q.shape[-1]).contiguous()
        acc = packed(rows, za, zw, as_float=as_float, out_hw=(1, 1), epilogue=epilogue)
        return acc.reshape(self._out_shape(x_q))


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
    zp, w_scale, bias = checked_weights(w_q, w_scale, w_zero_point, bias, backend)
    geometry = conv_geometry(w_q, stride, padding, dilation, groups)
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
    zp, w_scale, bias = checked_weights(w_q, w_scale, w_zero_point, bias, backend)
    return PackedLinear(backend, w_q, w_scale, zp, bias, Accumulator(w_q, zp, None, method))
