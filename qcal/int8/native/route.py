"""When a packed layer runs on the native kernel (``native.py``), and how.

The native kernel computes FBGEMM's accumulator (pairs saturating in its order; the exact sum
where no pair can saturate) or, in its exact variant, the exact sum whatever the codes, which
every kernel that does not saturate computes; its fused store is the fbgemm, qnnpack and ort
requantization (``requant.fused_epilogue``). ``NativeRoute`` is the part of a packed
layer (``packed.py``) that decides: the weights packed once, the fused store built once per
(requantization, output zero point, ReLU, dtype), and the two ways in.
"""

from __future__ import annotations

import torch

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
