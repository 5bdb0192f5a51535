"""FBGEMM's int16 pair saturation, emulated only where a pair can saturate.

A raw pair ``s = a0*w0 + a1*w1`` (uint8 codes ``a``, int8 codes ``w``) leaves int16 only if
``a0*|w0| + a1*|w1| > 32767``. With ``|w| <= 128`` that needs ``a0 + a1 >= 256``: both codes
large. After a histogram observer such pairs are rare, so instead of computing every pair of
every output pixel (``saturation.py``'s order, which this module keeps), a layer:

1. screens the (padded) input: an input pixel is a *candidate* when some pair that could start
   there can reach int16's limit by the weights' per-slot maxima (for an even number of
   channels per group, pairs are channel pairs ``(2q, 2q+1)`` of one pixel and one tap, so the
   bound is per channel pair; otherwise a pair may straddle two taps and any code above
   ``32767 / (2 max|w|)`` makes the pixel a candidate);
2. keeps the output pixels whose window holds a candidate (a max-pool of the candidate map
   with the conv's kernel, stride and dilation);
3. gathers those windows in FBGEMM's (kh, kw, c) order, keeps the pairs whose bound by the
   per-pair weight maxima exceeds int16, and computes ``sat16(s) - s`` for them for every
   output channel of their group, then scatters the sums back.

Each step only discards pairs that provably cannot saturate, so the result equals the full
emulation (tests/int8/test_int8_pair_sites.py checks it against a brute force at random and
at the all-saturating extreme). The weight-side numbers are built once per packed layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["PairPlan", "conv_pair_delta", "depthwise_pair_delta", "linear_pair_delta", "pair_plan"]

_I16_MIN, _I16_MAX = -32768, 32767
_CHUNK = 1 << 22  # elements per temporary block


@dataclass(frozen=True, eq=False)
class PairPlan:
    """The weight side of the localised emulation for one conv2d or linear layer.

    Attributes:
        w_pairs: (G, O/G, P, 2) float32 raw weight codes in reduction order, K padded to even.
        pair_bound: (G, P, 2) ``max_o |w|`` of each pair slot over the group's outputs.
        channel_bound: conv with an even number of channels per group: (C/2, 2) ``max |w|`` of
            channels (2q, 2q+1) over the group's outputs and every tap; else None.
        w_max: ``max |w|`` over the layer.
        window_reach: one input channel per group: (C,) ``max (|w_2p| + |w_2p+1|)`` over the
            channel's outputs and pairs of taps; else None.
        geometry: (stride, padding, dilation, groups) for conv, None for linear.
        kernel: (kh, kw) for conv, (1, 1) for linear.
    """

    w_pairs: torch.Tensor
    pair_bound: torch.Tensor
    channel_bound: torch.Tensor | None
    w_max: int
    window_reach: torch.Tensor | None
    geometry: tuple | None
    kernel: tuple[int, int]


@torch.no_grad()
def pair_plan(w_q: torch.Tensor, geometry: tuple | None = None) -> PairPlan:
    """Build the plan from raw weight codes: (O, C/G, kh, kw) with ``geometry``, or (O, K)."""
    if w_q.dim() == 2:
        g, wr, kernel = 1, w_q, (1, 1)
    else:
        o, cg, kh, kw = w_q.shape
        g, kernel = geometry[3], (kh, kw)
        wr = w_q.permute(0, 2, 3, 1).reshape(o, kh * kw * cg)  # (kh, kw, c) order
    o, k = wr.shape
    wf = F.pad(wr.float(), (0, k % 2)).reshape(g, o // g, -1, 2)  # FBGEMM pads K with a zero
    channel_bound = None
    if w_q.dim() == 4 and w_q.shape[1] % 2 == 0:
        per = w_q.float().abs().amax((2, 3)).reshape(g, o // g, -1).amax(1)  # (G, C/G)
        channel_bound = per.reshape(-1, 2)
    w_max = int(w_q.to(torch.int16).abs().max()) if w_q.numel() else 0
    window_reach = wf.abs().sum(-1).amax((1, 2)) if w_q.dim() == 4 and w_q.shape[1] == 1 else None
    return PairPlan(wf.contiguous(), wf.abs().amax(1), channel_bound, w_max, window_reach, geometry, kernel)


def _pair_delta(a: torch.Tensor, group: torch.Tensor | None, plan: PairPlan) -> tuple[torch.Tensor, int]:
    """``sum_p sat16(s_p) - s_p`` for activation rows ``a`` (R, K) float in reduction order.

    ``group``: (R,) the group each row belongs to (None: every group, ``a`` being (M, G, K)).
    Returns (delta int32 (R, O/G), or (M, O) for every group; number of saturated pairs).
    """
    og = plan.w_pairs.shape[1]
    shape = a.shape
    if group is None:
        group = torch.arange(shape[1]).repeat(shape[0])
        a = a.reshape(-1, shape[2])
    a = F.pad(a, (0, shape[-1] % 2)).reshape(a.shape[0], -1, 2)  # (R, P, 2)
    mag, bound = a.abs(), plan.pair_bound[group]  # abs keeps the bound right for signed codes too
    reach = mag[..., 0].mul_(bound[..., 0]).add_(mag[..., 1].mul_(bound[..., 1]))  # (R, P): largest |s|
    ri, pi = (reach > _I16_MAX).nonzero(as_tuple=True)
    delta = torch.zeros(a.shape[0], og, dtype=torch.int32)
    count = 0
    step = max(1, _CHUNK // max(1, og))
    for e0 in range(0, ri.numel(), step):
        re, pe = ri[e0:e0 + step], pi[e0:e0 + step]
        ae = a[re, pe]  # (E, 2)
        we = plan.w_pairs[group[re], :, pe]  # (E, O/G, 2)
        s = we[..., 0] * ae[:, 0:1] + we[..., 1] * ae[:, 1:2]  # exact in float32: |s| <= 65280
        d = s.clamp(_I16_MIN, _I16_MAX).sub_(s)
        count += int(d.count_nonzero())
        delta.index_add_(0, re, d.to(torch.int32))
    return (delta if len(shape) == 2 else delta.reshape(shape[0], -1)), count


@torch.no_grad()
def linear_pair_delta(plan: PairPlan, x_q: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Saturation delta of ``linear``: pairs along the input features. Returns (delta (..., O), count)."""
    a = x_q.reshape(-1, x_q.shape[-1]).float()
    delta, count = _pair_delta(a, torch.zeros(a.shape[0], dtype=torch.long), plan)
    return delta.reshape(*x_q.shape[:-1], -1), count


def _tap_entries(plan: PairPlan, ni, qi, hi, wi, out_hw):
    """Every (candidate, tap) where tap ``t = (i, j)`` of some output pixel reads the candidate
    channel pair at padded pixel (hi, wi): (index into the candidates, flat output pixel, pair
    index ``p = t * pairs_per_tap + q`` in the group)."""
    (sh, sw), _, (dh, dw), _ = plan.geometry
    (kh, kw), (ho, wo) = plan.kernel, out_hw
    taps = torch.arange(kh * kw)
    oh = hi[:, None] - (taps // kw * dh)[None]  # (Nc, T): the output row times sh
    ow = wi[:, None] - (taps % kw * dw)[None]
    ok = (oh >= 0) & (ow >= 0) & (oh % sh == 0) & (ow % sw == 0) & (oh < ho * sh) & (ow < wo * sw)
    e, t = ok.nonzero(as_tuple=True)
    pixel = (ni[e] * ho + oh[e, t] // sh) * wo + ow[e, t] // sw
    qg = plan.w_pairs.shape[2] // (kh * kw)  # channel pairs per group and tap
    return e, pixel, t * qg + qi[e] % qg


def _channel_pair_delta(plan: PairPlan, xp: torch.Tensor, out_hw: tuple[int, int], delta: torch.Tensor) -> int:
    """Conv with an even number of channels per group: every pair is channels (2q, 2q+1) of one
    padded pixel under one tap, so the candidates are (image, channel pair, pixel) entries with
    ``a0*cb0 + a1*cb1 > 32767`` (``channel_bound``), each met once per tap that reads it.

    Adds the delta into ``delta`` (N*H'*W'*G, O/G) int32 or float32, in place; returns the count.
    """
    n, c, hp, wp = xp.shape
    groups, og = plan.w_pairs.shape[:2]
    x2 = xp.reshape(n, c // 2, 2, hp, wp)
    # a pair that can saturate holds a code above 32767 / (2 max|w|): a cheap byte compare first
    ni, qi, hi, wi = (_magnitude(x2) >= _threshold(plan.w_max)).any(2).nonzero(as_tuple=True)
    a0, a1 = x2[ni, qi, 0, hi, wi].float(), x2[ni, qi, 1, hi, wi].float()
    m0, m1 = a0.abs(), a1.abs()
    cb = plan.channel_bound[qi]  # then the channel pair's own bound
    keep = (m0 * cb[:, 0] + m1 * cb[:, 1] > _I16_MAX).nonzero().flatten()
    ni, qi, hi, wi, a0, a1, m0, m1 = (t[keep] for t in (ni, qi, hi, wi, a0, a1, m0, m1))
    gi = qi // (c // 2 // groups)
    count, step = 0, max(1, _CHUNK // max(1, og))
    per_chunk = max(1, (1 << 20) // (plan.kernel[0] * plan.kernel[1]))  # candidates x taps per block
    for c0 in range(0, ni.numel(), per_chunk):
        part = slice(c0, c0 + per_chunk)
        e, pixel, p = _tap_entries(plan, ni[part], qi[part], hi[part], wi[part], out_hw)
        e = e + c0
        g = gi[e]
        bound = plan.pair_bound[g, p]  # (E, 2): the tighter bound of this pair's own weights
        live = (m0[e] * bound[:, 0] + m1[e] * bound[:, 1] > _I16_MAX).nonzero().flatten()
        for l0 in range(0, live.numel(), step):
            k = live[l0:l0 + step]
            ek = e[k]
            we = plan.w_pairs[g[k], :, p[k]]  # (E', O/G, 2)
            s = we[..., 0] * a0[ek, None] + we[..., 1] * a1[ek, None]  # exact: |s| <= 65280
            d = s.clamp(_I16_MIN, _I16_MAX).sub_(s)
            count += int(d.count_nonzero())
            delta.index_add_(0, pixel[k] * groups + g[k], d.to(delta.dtype))
    return count


def _magnitude(x: torch.Tensor) -> torch.Tensor:
    """|codes|, without overflow for int8 (abs(-128) is -128 in int8)."""
    return x if x.dtype == torch.uint8 else x.to(torch.int16).abs_()


def _threshold(reach: int | torch.Tensor) -> int | torch.Tensor:
    """The smallest code ``a`` with ``a * reach > 32767``: a pair whose two weights' magnitudes
    sum to at most ``reach`` can only saturate if one of its codes reaches it."""
    if isinstance(reach, torch.Tensor):
        never = torch.full_like(reach, 256, dtype=torch.int16)  # above every |code|
        return torch.where(reach > 0, (_I16_MAX // reach.clamp_min(1).long() + 1).clamp_max(256).to(torch.int16), never)
    return _I16_MAX // max(2 * reach, 1) + 1


def _candidates(plan: PairPlan, xp: torch.Tensor) -> torch.Tensor:
    """(N, Hp, Wp) bool: padded input pixels holding a code of a pair that could saturate: one
    of its codes must exceed 32767 / (2 max|w|) (pairs may straddle two taps here)."""
    return (_magnitude(xp) >= _threshold(plan.w_max)).any(1)


@torch.no_grad()
def conv_pair_delta(plan: PairPlan, x_q: torch.Tensor, za: int, out: torch.Tensor | None = None,
                    ) -> tuple[torch.Tensor, int]:
    """Saturation delta of ``conv2d`` (im2col's (kh, kw, c) order, pads holding ``za``).

    ``out``: a channels_last (N, O, H', W') accumulator to add the delta into, in place,
    instead of a new zero tensor: int32, or float32 when ``|acc| + P * 32768 <= 2^24`` (each of
    the P pairs moves an output by at most 32768, so every partial sum stays exact).

    Returns:
        (delta int32 (N, O, H', W'), or ``out`` plus it; count).
    """
    (sh, sw), (ph, pw), (dh, dw), groups = plan.geometry
    kh, kw = plan.kernel
    n, c = x_q.shape[:2]
    o = plan.w_pairs.shape[0] * plan.w_pairs.shape[1]
    xp = F.pad(x_q, (pw, pw, ph, ph), value=int(za)) if (ph or pw) else x_q
    ho = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    out = _target(out, (n, o, ho, wo))
    nhwc = out.permute(0, 2, 3, 1)  # a view: channels_last
    if plan.channel_bound is not None:
        return out, _channel_pair_delta(plan, xp, (ho, wo), nhwc.view(-1, plan.w_pairs.shape[1]))
    sites = _out_sites(_candidates(plan, xp).unsqueeze(1), plan)[:, 0]  # (N, H', W')
    ni, hi, wi = sites.nonzero(as_tuple=True)
    xcl = xp.permute(0, 2, 3, 1)  # (N, Hp, Wp, C): a window's taps then channels
    rows = torch.arange(kh).mul_(dh).reshape(1, kh, 1)
    cols = torch.arange(kw).mul_(dw).reshape(1, 1, kw)
    cg = c // groups
    step = max(1, _CHUNK // (kh * kw * c))
    count = 0
    for m0 in range(0, ni.numel(), step):
        nm, hm, wm = ni[m0:m0 + step], hi[m0:m0 + step], wi[m0:m0 + step]
        win = xcl[nm.reshape(-1, 1, 1), hm.reshape(-1, 1, 1) * sh + rows, wm.reshape(-1, 1, 1) * sw + cols]
        a = win.reshape(-1, kh * kw, groups, cg).transpose(1, 2).reshape(-1, groups, kh * kw * cg).float()
        d, k = _pair_delta(a, None, plan)
        count += k
        nhwc[nm, hm, wm] += d  # sites are distinct
    return out, count


def _target(out: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor:
    """``out`` checked (int32, or float32 exact at every partial sum; channels_last; ``shape``),
    or a new int32 zero tensor like that."""
    if out is None:
        return torch.zeros(shape, dtype=torch.int32).contiguous(memory_format=torch.channels_last)
    if (out.shape != shape or out.dtype not in (torch.int32, torch.float32)
            or not out.is_contiguous(memory_format=torch.channels_last)):
        raise ValueError(f"out must be an int32 or float32 channels_last tensor of shape {shape}, got "
                         f"{out.dtype} {tuple(out.shape)} with strides {out.stride()}")
    return out


def _out_sites(hit: torch.Tensor, plan: PairPlan) -> torch.Tensor:
    """Output positions whose window holds a candidate input pixel: an OR over the window of
    the bool map ``hit`` (N, C', Hp, Wp), along W then along H (max_pool2d is ~20x slower here)."""
    (sh, sw), _, (dh, dw), _ = plan.geometry
    (kh, kw), (hp, wp) = plan.kernel, hit.shape[2:]
    ho, wo = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
    rows = None
    for j in range(kw):
        v = hit[..., j * dw: j * dw + sw * (wo - 1) + 1: sw]
        rows = v.clone() if rows is None else rows.logical_or_(v)
    sites = None
    for i in range(kh):
        v = rows[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh]
        sites = v.clone() if sites is None else sites.logical_or_(v)
    return sites


@torch.no_grad()
def depthwise_pair_delta(plan: PairPlan, x_q: torch.Tensor, za: int, out: torch.Tensor | None = None,
                         ) -> tuple[torch.Tensor, int]:
    """Saturation delta of a conv with one input channel per group: pairs of taps (2p, 2p+1) in
    (kh, kw) order. Only the (image, channel, output pixel) sites whose window holds a code
    ``x`` with ``x * window_reach_c > 32767`` are computed. ``out`` as in ``conv_pair_delta``.
    Returns (delta int32 (N, O, H', W'), or ``out`` plus it; count).
    """
    (sh, sw), (ph, pw), (dh, dw), _ = plan.geometry
    kh, kw = plan.kernel
    c, mult = plan.w_pairs.shape[:2]
    n = x_q.shape[0]
    xp = F.pad(x_q, (pw, pw, ph, ph), value=int(za)) if (ph or pw) else x_q
    hit = _magnitude(xp) >= _threshold(plan.window_reach).reshape(1, c, 1, 1)  # (N, C, Hp, Wp)
    sites = _out_sites(hit, plan)  # (N, C, H', W')
    ho, wo = sites.shape[2:]
    out = _target(out, (n, c * mult, ho, wo))
    per_channel = out.view(n, c, mult, ho, wo)
    ni, ci, hi, wi = sites.nonzero(as_tuple=True)
    rows = torch.arange(kh).mul_(dh).reshape(1, kh, 1)
    cols = torch.arange(kw).mul_(dw).reshape(1, 1, kw)
    count, step = 0, max(1, _CHUNK // (mult * kh * kw))
    for s0 in range(0, ni.numel(), step):
        nm, cm, hm, wm = (t[s0:s0 + step] for t in (ni, ci, hi, wi))
        win = xp[nm.reshape(-1, 1, 1), cm.reshape(-1, 1, 1), hm.reshape(-1, 1, 1) * sh + rows,
                 wm.reshape(-1, 1, 1) * sw + cols].reshape(-1, kh * kw).float()
        d, k = _pair_delta(win, cm, plan)  # (S, mult)
        count += k
        per_channel[nm, cm, :, hm, wm] += d  # sites are distinct
    return out, count
