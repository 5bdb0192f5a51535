"""When a packed layer runs on the native kernel (``native.py``), and how.

The native kernel computes FBGEMM's accumulator (pairs saturating in its order; the exact sum
where no pair can saturate) or, in its exact variant, the exact sum whatever the codes, which
every kernel that does not saturate computes; its fused store is the fbgemm, qnnpack and ort
requantization (``requant.fused_epilogue``). ``NativeRoute`` is the part of a packed
layer (``packed.py``) that decides: the weights packed once, the fused store built once per
(requantization, output zero point, ReLU, dtype), and the two ways in.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from qcal.int8.common.layer_checks import out_dtype
from qcal.int8.common.requant import Requant, fused_epilogue
from qcal.int8.cpu.flags import cpu_flags
from qcal.int8.native import Epilogue, NativeConv, available, native_conv, native_vnni
from qcal.int8.native import requant as native_requant

__all__ = ["NativeRoute"]


class NativeRoute:
    """Mixed into ``packed._Packed``: uses its ``w_q``, ``w_zero_point``, ``accumulator``,
    ``_natives`` (a dict), ``_saturates``, ``_can_saturate`` and ``_native_call``."""

    def native(self) -> NativeConv | None:
        """The weights packed for the native kernel (``native.py``), once; None where it cannot run."""
        if None not in self._natives:
            self._natives[None] = native_conv(self.w_q, getattr(self, "geometry", None))
        return self._natives[None]

    def _epilogue(self, rq: Requant, zo: int, relu: bool, dtype: torch.dtype) -> Epilogue | None:
        key = ("epilogue", rq, zo, relu, dtype)  # rq: cached per scales, compared by identity
        if key not in self._natives:
            self._natives[key] = fused_epilogue(rq, zo, relu, dtype, self.w_q.shape[0])
        return self._natives[key]

    def _native_whatever_the_codes(self, x_q, za, zo, relu, dtype, rq: Requant, saturate, isa):
        """The output, when neither the engine nor the store needs the activations' range: under
        fbgemm on a CPU whose kernel saturates, the native kernel is FBGEMM's arithmetic whatever
        the codes, and the fused store holds for the bound of the dtype's full range (no pass
        over the input). None otherwise. (Where the kernel does not saturate, the exact kernel
        would hold whatever the codes too, but the range pass costs less than its extra time
        over the saturating kernel wherever the codes keep every pair inside int16.)"""
        if (rq.backend != "fbgemm" or x_q.dtype != torch.uint8 or self.accumulator.method != "auto"
                or not self._saturates(rq, saturate, isa)):
            return None
        packed, epilogue = self.native(), self._epilogue(rq, zo, relu, dtype)
        if packed is None or epilogue is None:
            return None
        if self.accumulator.bound(max(255 - za, za)) + packed.pair_shift > epilogue.max_bound:
            return None
        return self._native_call(packed, x_q, za, self._native_zw(), False, epilogue)

    def capture(self, x_q: torch.Tensor, x_scale: float, x_zero_point: int, out_scale: float,
                out_zero_point: int | torch.Tensor, *, relu: bool = False) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """``call(x)``: the output codes ``self(x, x_scale, x_zero_point, out_scale,
        out_zero_point, relu=relu)`` gives, for any input of ``x_q``'s shape, strides and dtype,
        with every choice and argument prepared now (a captured program's layer:
        ``qcal.graph.capture``); None where the layer's route depends on the codes."""
        if x_q.dtype != torch.uint8 or self._fit(x_q) is not x_q:
            return None
        za, zo, dtype = int(x_zero_point), int(out_zero_point), out_dtype(out_zero_point)
        rq = self.requant(float(x_scale), float(out_scale), self.flavour())
        out_shape = tuple(self._out_shape(x_q))
        if getattr(self, "geometry", None) is None:  # linear: the rows as 1x1 images
            rows = (math.prod(x_q.shape[:-1]), 1, 1, x_q.shape[-1])
            call = self._bind_whatever_the_codes(rows, za, zo, relu, dtype, rq, (1, 1))
            return None if call is None else lambda x: call(x.reshape(rows).contiguous()).reshape(out_shape)
        n, c, h, w = x_q.shape
        call = self._bind_whatever_the_codes((n, h, w, c), za, zo, relu, dtype, rq, out_shape[2:])
        if call is None:
            return None
        finish = self._finish
        return lambda x: finish(call(x.permute(0, 2, 3, 1).contiguous()).permute(0, 3, 1, 2))

    def _bind_whatever_the_codes(self, shape: tuple[int, ...], za: int, zo: int, relu: bool, dtype,
                                 rq: Requant, out_hw: tuple[int, int]):
        """``NativeConv.bind`` for the call that gives this layer's codes for any uint8 input of
        this ``shape`` (a captured program, ``qcal.graph.capture``), or None where the route
        ``__call__`` takes depends on the codes. Under fbgemm on a CPU whose kernel saturates:
        the saturating kernel (FBGEMM's arithmetic whatever the codes, as
        ``_native_whatever_the_codes``). Elsewhere no pair saturates, and every route
        ``__call__`` can take gives the exact sum (the saturating kernel only where no pair can
        leave int16; oneDNN and the float engine exact by construction), so the exact kernel
        stands for all of them; with the fused store where it holds for the bound of the
        dtype's full range. Not where oneDNN's AMX convolutions would serve a large layer (on
        a CPU with AMX-INT8 they are the faster exact sum), nor where the AVX2 build's exact
        kernel is slower than the float engine (``_exact_pays``)."""
        if self.accumulator.method != "auto" or 0 in shape:
            return None
        sat = self._saturates(rq, None, None)
        packed, epilogue = self.native(), self._epilogue(rq, zo, relu, dtype)
        if packed is None or epilogue is None or (sat and rq.backend != "fbgemm"):
            return None
        if not sat and (not self._exact_pays(packed) or (self._onednn_fast() and shape[0] * out_hw[0] * out_hw[1]
                        >= 1024 and self.accumulator.onednn_here(255, za))):
            return None
        bound = self.accumulator.bound(max(255 - za, za)) + (packed.pair_shift if sat else 0)
        if bound > epilogue.max_bound:
            return None
        return packed.bind(shape, za, self._native_zw(), out_hw, epilogue, exact=not sat)

    def _native_plan(self, x_q, za, x_range: tuple[int, int], sat: bool, rq: Requant):
        """(kernel, zero points or None, bound on |acc|) for the native kernel, or None where it
        does not compute what runs here. The kernel: the packed weights (FBGEMM's saturating
        pairs) or their ``exact`` method (the exact sum).

        Its pairs saturate as FBGEMM's do (``saturation.py``'s order), so the saturating kernel
        serves a layer that saturates under fbgemm, and any layer whose pairs cannot saturate;
        the exact kernel every other layer that does not saturate, where it beats the float
        engine (``_exact_pays``). MLAS (``ort``) where it
        saturates pairs differently, and an explicit accumulator ``method`` is honoured.
        """
        if self.accumulator.method != "auto" or x_q.dtype != torch.uint8:
            return None
        # a VNNI build's exact kernel is the faster one: it serves every layer that does not saturate
        exact = not sat and (native_vnni() or self._can_saturate(max(abs(x_range[0]), x_range[1]), za))
        if (rq.backend != "fbgemm") if sat else exact and self._onednn_sums(x_range[1], za):
            return None
        packed = self.native()
        if packed is None or (exact and not self._exact_pays(packed)):
            return None
        amax = max(x_range[1] - za, za - x_range[0], 0)
        bound = self.accumulator.bound(amax) + (packed.pair_shift if sat else 0)
        return packed.exact if exact else packed, self._native_zw(), bound

    def _native_store(self, acc, bound: float, rq: Requant, zo: int, relu: bool, dtype, axis: int, biased=False):
        """The codes of exact sums computed elsewhere (oneDNN's on a VNNI CPU, or the float
        engine's) through the native kernel's fused store: the same requantization as
        ``requant.requantize`` for the flavours it covers (``fused_epilogue``), in one pass
        instead of torch's elementwise ops (``biased``: ``acc`` holds oneDNN's float32 sums with
        the bias added, ``rq`` has none). None where it does not apply."""
        if self.accumulator.method != "auto":
            return None
        epilogue = self._epilogue(rq, zo, relu, dtype)
        if epilogue is None or bound > epilogue.max_bound:
            return None
        return native_requant(acc, epilogue, axis, biased=biased)

    def _native_zero_point(self, x_q, za, x_range, rq: Requant, zo: int, relu: bool, dtype, axis: int):
        """The codes where oneDNN's sums on the raw weights serve the layer (a VNNI CPU, weight
        zero points not all 0): ``y - zw_j * window sums`` subtracted in the native store's pass
        (int32, exact: the bound stays under 2^31). None where that does not apply."""
        epilogue = self._epilogue(rq, zo, relu, dtype) if self.accumulator.method == "auto" else None
        if epilogue is None or not available():
            return None
        parts = self.accumulator.zero_point_sums(x_q, za, x_range)
        if parts is None:
            return None
        y, sums, bound = parts
        if bound > min(epilogue.max_bound, 2**31 - 1):
            return None
        return native_requant(y, epilogue, axis, sums=sums, zw=self.accumulator.w_zero_point)

    @staticmethod
    def _exact_pays(packed: NativeConv) -> bool:
        """Whether the exact kernel beats the float engine on this layer: every layer with a
        VNNI build (``vpdpbusd``: the exact kernel at the saturating one's speed); with the AVX2
        build depthwise and 1x1 (and linear) layers, 1.4-1.6x faster on an AVX2 machine, while a
        3x3 im2col layer took 1.3-1.7x the float engine's time there (its float32 convolution is
        as fast as the saturating kernel on those shapes, the widened exact kernel 1.25x
        slower), so those keep the float engine."""
        return native_vnni() or packed.depthwise or packed.kernel == (1, 1)

    def _onednn_sums(self, hi: int, za: int) -> bool:
        """Whether the accumulator takes oneDNN's exact int32 sums rather than the exact native
        kernel, a choice of speed only (both exact): on a CPU with AMX-INT8, oneDNN's AMX
        convolutions ran 2.5-4x faster than the VNNI build's kernel (Intel Xeon), so wherever
        they are exact they serve the layer; on an AVX-512-VNNI CPU without AMX (AMD EPYC) the
        native kernel with its fused store was as fast or faster (MobileNetV2 per_tensor_affine,
        batch 8: 0.073 s against 0.102 s), so it serves the layer there."""
        return self._onednn_fast() and self.accumulator.onednn_here(hi, za)

    @staticmethod
    def _onednn_fast() -> bool:
        """This machine has AMX-INT8 (the instructions follow the hardware; the arithmetic does not)."""
        return "amx_int8" in cpu_flags()

    def _native_zw(self) -> torch.Tensor | None:
        """The weight zero points the kernel subtracts, or None when all are 0 (no window sums)."""
        return None if self.accumulator.zw_zero else self.w_zero_point
