"""When a packed layer runs on the native kernel (``native.py``), and how.

The native kernel computes FBGEMM's accumulator (pairs saturating in its order) and, where no
pair can saturate, the exact sum every backend needs; its fused store is the fbgemm, qnnpack
and ort requantization (``requant.fused_epilogue``). ``NativeRoute`` is the part of a packed
layer (``packed.py``) that decides: the weights packed once, the fused store built once per
(requantization, output zero point, ReLU, dtype), and the two ways in.
"""

from __future__ import annotations

import torch

from qcal.int8.common.requant import Requant, fused_epilogue
from qcal.int8.native import Epilogue, NativeConv, native_conv

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
        over the input). None otherwise."""
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
        """(packed weights, zero points or None, bound on |acc|) for the native kernel, or None
        where it does not compute what runs here.

        Its pairs saturate as FBGEMM's do (``saturation.py``'s order), so it serves a layer that
        saturates under fbgemm, and any backend where no pair can saturate (the exact sum).
        MLAS (``ort``) pairs differently, and an explicit accumulator ``method`` is honoured.
        """
        if self.accumulator.method != "auto" or x_q.dtype != torch.uint8:
            return None
        if (rq.backend != "fbgemm") if sat else self._can_saturate(max(abs(x_range[0]), x_range[1]), za):
            return None
        packed = self.native()
        if packed is None:
            return None
        amax = max(x_range[1] - za, za - x_range[0], 0)
        bound = self.accumulator.bound(amax) + (packed.pair_shift if sat else 0)
        return packed, self._native_zw(), bound

    def _native_zw(self) -> torch.Tensor | None:
        """The weight zero points the kernel subtracts, or None when all are 0 (no window sums)."""
        return None if self.accumulator.zw_zero else self.w_zero_point
