"""The exact int32 accumulator ``acc[j] = sum_k (a_k - za)(w_jk - zw_j)``, computed fast.

Two engines, both exact by construction and proven so by tests built at the bound:

* **float**: ``F.conv2d`` / ``F.linear`` on float32 tensors of the centred integers. Every
  partial sum of integer products is an integer no larger than the channel bound
  ``B_j = max|a - za| * sum_k |w_jk - zw_j|``; while ``max_j B_j <= 2^24`` float32 represents
  all of them exactly, whatever the summation order (direct and GEMM convolutions only
  multiply by the integers themselves; oneDNN's fp32 convolution does not pick Winograd
  unless asked). Above the bound the input channels are split into chunks that each stay
  under it and the chunks are added in int32.
* **onednn**: oneDNN's u8 x s8 convolution / matmul (``torch.ops.onednn.*`` on plain
  uint8/int8 tensors, unit scales, float32 output), which on VNNI CPUs accumulates in int32
  without int16 saturation and hands back ``float(acc)``, exact under the same bound (and
  chunked the same way above it). Used only when a start-up probe at the saturation extreme
  agrees with the float engine, the CPU has VNNI, activations are uint8, weights int8 with
  zero points 0. It is 3-5x faster than the float engine.
  Without VNNI, oneDNN's u8 x s8 kernels add adjacent products in int16 with saturation
  (``vpmaddubsw``), like FBGEMM's: exact exactly when no pair can leave int16, which
  ``2 * max a * max |w| <= 32767`` guarantees (activation codes <= 127, as every
  ``reduce_range`` scheme has). A second probe at that extreme (same-sign weights, so a sum
  of four products in int16 would overflow) confirms it, and each call checks the bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from qcal.int8.common.exact_f32 import F32_EXACT
from qcal.int8.common.onednn_sums import (
    _onednn_conv_pack,
    _onednn_linear,
    _onednn_padded_conv,
    onednn_exact,
    onednn_pairs_exact,
)

__all__ = ["F32_EXACT", "PAIR_LIMIT", "Accumulator", "Method", "chunk_plan", "onednn_exact", "onednn_pairs_exact"]

#: Largest magnitude below which every integer is exact in float32.
_PAIRS_PATH_ENABLED = False  # oneDNN without VNNI below the pair bound: disabled, see onednn_small
#: Largest int16 pair sum ``a0*w0 + a1*w1`` that cannot saturate.
PAIR_LIMIT = 2**15 - 1
Method = Literal["auto", "float", "onednn"]


def chunk_plan(col_sums: torch.Tensor, amax: int, limit: int = F32_EXACT) -> tuple[tuple[int, int], ...] | None:
    """Split input channels into contiguous ranges whose accumulator bound stays <= ``limit``.

    Args:
        col_sums: (O, C) ``sum |w - zw|`` over the kernel window, per output and input channel.
        amax: ``max |a - za|`` over the activations.
    Returns:
        ((c0, c1), ...) covering 0..C, or None when one input channel alone exceeds the limit.
    """
    c = col_sums.shape[1]
    if amax * float(col_sums.sum(1).max()) <= limit:
        return ((0, c),)
    chunks, start, run = [], 0, torch.zeros(col_sums.shape[0], dtype=torch.float64)
    for i in range(c):
        col = col_sums[:, i]
        if amax * float(col.max()) > limit:
            return None
        if amax * float((run + col).max()) > limit:
            chunks.append((start, i))
            start, run = i, torch.zeros_like(run)
        run = run + col
    chunks.append((start, c))
    return tuple(chunks)


def _as_uint8(x_q: torch.Tensor, za: int) -> tuple[torch.Tensor, int]:
    """int8 activation codes as uint8 codes of the same values (oneDNN takes uint8 only):
    ``a + 128`` with ``za + 128`` leaves every ``a - za``, so the accumulator, unchanged."""
    if x_q.dtype == torch.int8:
        return (x_q.to(torch.int16) + 128).to(torch.uint8), int(za) + 128
    return x_q, za


def _absmax(t: torch.Tensor) -> float:
    lo, hi = torch.aminmax(t)
    return max(-float(lo), float(hi))


def _uint8_range(x_q: torch.Tensor, za: int, x_range: tuple[int, int] | None):
    """(x_q, za, hi, amax) as uint8 codes (``_as_uint8``): the top code and the largest
    ``|a - za|``; ``x_range``: (min, max) of the original ``x_q`` when the caller has it."""
    shift = 128 if x_q.dtype == torch.int8 else 0  # _as_uint8 adds it
    x_q, za = _as_uint8(x_q, za)
    lo, hi = (x_range[0] + shift, x_range[1] + shift) if x_range is not None else torch.aminmax(x_q)
    lo, hi = int(lo), int(hi)
    return x_q, za, hi, max(hi - za, za - lo, 0)


@dataclass(frozen=True, eq=False)
class Accumulator:
    """Exact accumulator of one conv2d (4-D weight) or linear (2-D weight) layer.

    Attributes:
        w_q: the raw weight codes, (O, C/G, kh, kw) or (O, K).
        w_zero_point: int64 (O,).
        geometry: (stride, padding, dilation, groups) for conv, None for linear.
        method: "auto" picks oneDNN when exact and applicable, else float.
    """

    w_q: torch.Tensor
    w_zero_point: torch.Tensor
    geometry: tuple | None
    method: Method = "auto"
    w_centred: torch.Tensor = field(init=False, repr=False)
    col_sums: torch.Tensor = field(init=False, repr=False)
    use_onednn: bool = field(init=False)
    onednn_zw: bool = field(init=False)
    onednn_small: bool = field(init=False)
    pair_max: int = field(init=False)
    zw_zero: bool = field(init=False)
    _cache: dict = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        zw = self.w_zero_point.reshape([-1] + [1] * (self.w_q.dim() - 1))
        wc = self.w_q.to(torch.int32) - zw  # (O, C/G, kh, kw) or (O, K)
        object.__setattr__(self, "w_centred", wc.float())
        sums = wc.abs().double()
        sums = sums.sum((2, 3)) if self.w_q.dim() == 4 else sums  # (O, C/G) or (O, K)
        object.__setattr__(self, "col_sums", sums)
        object.__setattr__(self, "zw_zero", bool((self.w_zero_point == 0).all()))
        eligible = self.w_q.dtype == torch.int8 and self.zw_zero
        if self.method == "onednn" and not (eligible and (onednn_exact() or onednn_pairs_exact())):
            raise ValueError("accumulator method 'onednn' needs int8 weights with zero point 0 on a CPU where "
                             "oneDNN is exact (VNNI, or activations small enough that no int16 pair saturates)")
        use = eligible and self.method in ("auto", "onednn") and onednn_exact()
        object.__setattr__(self, "use_onednn", use)  # at any activation range
        int8_auto = self.method == "auto" and self.w_q.dtype == torch.int8
        # Non-zero weight zero points: oneDNN on the raw weights, minus zw_j * window sums
        object.__setattr__(self, "onednn_zw", int8_auto and not eligible and onednn_exact())
        # Without VNNI: oneDNN while every raw pair a0*w0 + a1*w1 stays in int16 (checked per call)
        # (the switch first: while it is off, no CPU pays onednn_pairs_exact's probe convolutions)
        small = (_PAIRS_PATH_ENABLED and ((eligible and self.method in ("auto", "onednn")) or int8_auto)
                 and onednn_pairs_exact())
        # Off: a module-swap encoder under qnnpack_default lost exactness with it (cosine 0.93
        # in tests/calibration/test_model.py); kept for the investigation, see docs/performance.md
        object.__setattr__(self, "onednn_small", small and not use)
        w_max = int(self.w_q.to(torch.int16).abs().max()) if self.w_q.numel() else 0
        object.__setattr__(self, "pair_max", w_max)

    def bound(self, amax: int) -> float:
        """``amax * max_j sum_k |w_jk - zw_j|``: no partial sum can exceed it."""
        return amax * float(self.col_sums.sum(1).max())

    def _plan(self, amax: int):
        key = ("plan", amax)
        if key not in self._cache:
            self._cache[key] = chunk_plan(self.col_sums, amax)
        return self._cache[key]

    def _packed(self, chunk):
        key = ("pack", chunk)
        if key not in self._cache:
            w = self.w_q[:, chunk[0]:chunk[1]].contiguous()
            if self.geometry is None:
                self._cache[key] = torch.ops.onednn.qlinear_prepack(w, None)
            else:  # packed for the unpadded problem ``_onednn_padded_conv`` hands oneDNN
                stride, _, dilation, groups = self.geometry
                self._cache[key] = _onednn_conv_pack(w, (stride, (0, 0), dilation, groups))
        return self._cache[key]

    def _channels(self, x, chunk, channel_axis):
        c0, c1 = chunk
        if self.geometry is None or self.geometry[3] == 1:
            return x.narrow(channel_axis, c0, c1 - c0)
        groups, cg = self.geometry[3], self.w_q.shape[1]
        idx = (torch.arange(groups)[:, None] * cg + torch.arange(c0, c1)[None, :]).reshape(-1)
        return x.index_select(channel_axis, idx)

    def onednn_here(self, hi: int, za: int) -> bool:
        """Whether oneDNN is exact for uint8 activations up to ``hi`` (zero point ``za``):
        always on VNNI, else while no raw pair ``a0*w0 + a1*w1`` can leave int16."""
        if self.use_onednn or self.onednn_zw:
            return True
        if not self.onednn_small:
            return False
        padded = self.geometry is not None and any(self.geometry[1])
        return 2 * max(hi, za if padded else 0) * self.pair_max <= PAIR_LIMIT

    def _one(self, x, za, chunk, whole, bias=None, raw=False, onednn=False):
        """Accumulator of the input channels in ``chunk`` (float32, exact), plus ``bias`` if given;
        ``onednn``: by oneDNN (zero weight zero points); ``raw``: oneDNN's ``sum (a - za) w`` on
        the raw weights (zero points ignored)."""
        lin = self.geometry is None
        xs = x if whole else self._channels(x, chunk, -1 if lin else 1)
        if not whole and onednn:
            xs = xs.contiguous() if lin else xs.contiguous(memory_format=torch.channels_last)
        if onednn or raw:
            w = self.w_q if whole else self.w_q[:, chunk[0]:chunk[1]]
            packed = self._packed(chunk)
            if lin:
                shape = xs.shape
                return _onednn_linear(xs.reshape(-1, shape[-1]), za, w, packed, bias).reshape(*shape[:-1], -1)
            return _onednn_padded_conv(xs, za, packed, (w.shape[0], *w.shape[2:]), bias, self.geometry)
        wc = self.w_centred if whole else self.w_centred[:, chunk[0]:chunk[1]]
        xc = xs.to(torch.float32).sub_(za)  # centred activations: padding zeros == za
        if lin:
            return F.linear(xc, wc)
        stride, padding, dilation, groups = self.geometry
        return F.conv2d(xc, wc, None, stride, padding, dilation, groups)

    @torch.no_grad()
    def with_bias(self, x_q: torch.Tensor, za: int, bias: torch.Tensor, x_range: tuple[int, int] | None = None,
                  ) -> tuple[torch.Tensor, float] | None:
        """(``f32(acc + bias_j)``, bound on it) from oneDNN in one pass, or None when not exact here.

        oneDNN adds a float32 bias to ``float(acc) * 1.0`` with one rounding, which is
        FBGEMM's per-channel ``f32(f32(acc) + f32(b_j/ats_j))`` exactly while ``acc`` itself
        is exact: under the static bound, or, since oneDNN accumulates in int32, whenever the
        result shows ``|acc| < 2^24`` (checked: ``|y| + |b| + 2 < 2^24``). ``x_range``: as for
        ``__call__``.
        """
        if not (self.use_onednn or self.onednn_small) or not self.zw_zero:
            return None
        x_q, za, hi, amax = _uint8_range(x_q, za, x_range)
        if not self.onednn_here(hi, za):
            return None
        bias = bias.float().contiguous()
        bmax = float(bias.abs().max())
        y = self._one(x_q, za, (0, self.w_q.shape[1]), whole=True, bias=bias, onednn=True)
        if self.bound(amax) + bmax <= F32_EXACT:
            return y, self.bound(amax) + bmax
        ymax = _absmax(y)
        if ymax + bmax + 2 < F32_EXACT:
            return y, ymax
        return None

    def _raw_abs_sum(self) -> float:
        """``max_j sum_k |w_jk|`` over the raw weight codes (zero points ignored), once."""
        if "raw_abs_sum" not in self._cache:
            w = self.w_q.to(torch.int64).abs()
            self._cache["raw_abs_sum"] = float(w.reshape(w.shape[0], -1).sum(1).max()) if w.numel() else 0.0
        return self._cache["raw_abs_sum"]

    def _window_sums(self, x_q: torch.Tensor, za: int) -> torch.Tensor:
        """``sum_k (a_k - za)`` over each output's window (its group's channels and kernel
        taps), exact in float32 (|sum| <= 255 * K); (..., 1) for linear, (N, G, H', W') for conv."""
        if self.geometry is None:
            k = x_q.shape[-1]
            return (x_q.sum(-1, keepdim=True, dtype=torch.int32) - k * za).float()
        stride, padding, dilation, groups = self.geometry
        n, c, h, w = x_q.shape
        per_group = x_q.reshape(n, groups, c // groups, h, w) if groups > 1 else x_q
        sums = per_group.sum(2 if groups > 1 else 1, keepdim=groups == 1, dtype=torch.int32)  # (N, G, H, W)
        centred = sums.float().sub_((c // groups) * za)  # padded pixels hold za: they add 0
        ones = torch.ones(groups, 1, *self.w_q.shape[2:])
        return F.conv2d(centred, ones, None, stride, padding, dilation, groups)

    def _zero_point_parts(self, x_q: torch.Tensor, za: int, amax: int):
        """(y, sums, bound on |y - zw_j * sums|): oneDNN's exact int32 sum ``y`` on the raw
        weights (exact in its float32 result while that stays under 2^24: bounded by
        ``amax * max_j sum_k |w_jk|``, else checked) and the window sums ``sum_k (a_k - za)``
        (``_window_sums``); None when oneDNN's result is not provably exact."""
        y = self._one(x_q, za, (0, self.w_q.shape[1]), whole=True, raw=True)
        ymax = amax * self._raw_abs_sum()
        if ymax >= F32_EXACT:  # the static bound cannot tell: look at the sums
            ymax = _absmax(y)
            if ymax >= F32_EXACT:
                return None
        sums = self._window_sums(x_q, za)
        zw_max = float(self.w_zero_point.abs().max())
        corr_max = amax * self.w_q[0].numel() * zw_max  # sum_k |a_k - za| <= amax * K
        if ymax + corr_max >= F32_EXACT:  # too loose to tell: the observed sums
            corr_max = _absmax(sums) * zw_max
        return y, sums, ymax + corr_max

    def zero_point_sums(self, x_q: torch.Tensor, za: int, x_range: tuple[int, int]):
        """(y, sums, bound) where ``__call__`` would take oneDNN's sums on the raw weights (a
        VNNI CPU, non-zero weight zero points): the accumulator is ``y - zw_j * sums``, left to
        the caller (the native store subtracts it in its pass); None elsewhere."""
        if self.zw_zero or self.method != "auto":
            return None
        x_q, za, hi, amax = _uint8_range(x_q, za, x_range)
        if self._plan(amax) is None or not self.onednn_here(hi, za):
            return None
        return self._zero_point_parts(x_q, za, amax)

    def _zero_point_corrected(self, x_q: torch.Tensor, za: int, bound: float, amax: int):
        """(acc, bound) as ``sum_k (a_k - za) w_jk - zw_j * sum_k (a_k - za)`` from
        ``_zero_point_parts``: in float32 while every term and the result stay under 2^24,
        else in int32. None when oneDNN's result is not provably exact."""
        parts = self._zero_point_parts(x_q, za, amax)
        if parts is None:
            return None
        y, sums, both = parts
        o, groups = self.w_q.shape[0], 1 if self.geometry is None else self.geometry[3]
        zw = self.w_zero_point
        if groups > 1:
            sums = sums.repeat_interleave(o // groups, dim=1)  # (N, G, ...) -> (N, O, ...)
        axis_shape = [1] * y.dim()
        axis_shape[-1 if self.geometry is None else 1] = o
        zw = zw.reshape(axis_shape)
        if both < F32_EXACT:  # every term an exact float32 integer, and the result
            return y.sub_(sums * zw.float()), both
        acc = y.to(torch.int32).sub_(sums.to(torch.int32) * zw.to(torch.int32))  # |zw * sum| < 2^31
        return acc, bound

    @torch.no_grad()
    def __call__(self, x_q: torch.Tensor, za: int, x_range: tuple[int, int] | None = None,
                 ) -> tuple[torch.Tensor, float]:
        """(acc, bound): float32 holding exact integers when the bound allows, else int32.

        The float engine needs every partial sum under 2^24 (the static bound, else chunks);
        oneDNN sums in int32, so only its float32 result must stay under 2^24 (checked).
        ``x_range``: (min, max) of ``x_q`` when the caller has it (saves a pass).
        """
        x_q, za, hi, amax = _uint8_range(x_q, za, x_range)
        plan = self._plan(amax)
        bound = self.bound(amax)
        here = plan is not None and self.onednn_here(hi, za)
        plain = here and self.zw_zero
        if here and not self.zw_zero:
            found = self._zero_point_corrected(x_q, za, bound, amax)
            if found is not None:
                return found
        if plain and len(plan) > 1:
            acc = self._one(x_q, za, (0, self.w_q.shape[1]), whole=True, onednn=True)
            observed = _absmax(acc)
            if observed < F32_EXACT:  # float(acc) < 2^24 implies acc < 2^24: exact
                return acc, observed
        if plan is None:  # a single channel beyond float32: float64 is exact to 2^53
            xc = x_q.double() - za
            if self.geometry is None:
                return F.linear(xc, self.w_centred.double()).to(torch.int32), bound
            s, p, d, g = self.geometry
            return F.conv2d(xc, self.w_centred.double(), None, s, p, d, g).to(torch.int32), bound
        if len(plan) == 1:
            return self._one(x_q, za, plan[0], whole=True, onednn=plain), bound
        acc = None
        for chunk in plan:
            part = self._one(x_q, za, chunk, whole=False, onednn=plain).to(torch.int32)
            acc = part if acc is None else acc.add_(part)
        return acc, bound
