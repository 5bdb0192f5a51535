"""FBGEMM's int16 pair saturation (``vpmaddubsw``) and where it happens.

Without VNNI, FBGEMM's u8 x s8 kernels multiply raw codes (uint8 activation, int8 weight) and
add adjacent products (k, k+1) into int16 with saturation before widening to int32:
``sum_p sat16(a_2p*w_2p + a_2p+1*w_2p+1)``. The reduction order is im2col's (kh, kw, c) within
a group (K padded with zeros to even length); padded pixels hold the activation zero point.
The zero-point corrections (``za * sum w``, ``zw * sum a``) are exact int32 terms, so the
accumulator FBGEMM produces is the exact one plus ``sum_p (sat16(s_p) - s_p)``.

Which kernel family torch's fbgemm (and x86) engine runs, and on which instruction sets it
saturates, is mirrored from FBGEMM's source in ``isa.py``: on ``avx2`` and ``avx512`` CPUs
every family saturates; on ``avx512_vnni`` only the **depthwise** kernel does
(``fbgemm::depthwise_2d_same_pad``: groups == in_channels, out_channels == groups or
2*groups, groups % 8 == 0, square 3x3, 5x5 or 7x7 kernel, padding (k-1)/2, stride 1 or 2,
dilation 1), a hand-written AVX2 kernel that pairs taps (0,1), (2,3), ... with
``vpmaddubsw``. Every family pairs in the order above (the groupwise kernel's channel pairs
of one tap are im2col's pairs): measured 0 differing values against torch on an AVX2 CPU
(full-range activations, tests/test_int8_saturation.py) and on an AVX512-VNNI CPU.

When every activation code is <= 127, ``|a0*w0 + a1*w1| <= 2*127*128 = 32512`` and no pair
can saturate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qcal.int8.isa import AssumedCpu, KernelFamily, assumed_cpu, saturates

__all__ = [
    "ConvPath",
    "fbgemm_conv_path",
    "fbgemm_saturates",
    "pair_saturation",
    "pair_saturation_conv",
    "pair_saturation_linear",
]

ConvPath = KernelFamily  # the name this module used before the families were split
_I16_MIN, _I16_MAX = -32768, 32767
_CHUNK = 1 << 22  # elements per temporary (N, O, P, L) block


def _groups_together(cpg: int, kpg: int, cpu: AssumedCpu) -> int:
    # PackWeightMatrixForGConv::numOfGroupsTogether: 64-byte registers with AVX-512, else 32
    width = 64 if cpu.isa != "avx2" else 32
    return max(width // kpg // max(cpg, 4), 1)


def fbgemm_conv_path(
    in_channels: int, w_shape: tuple[int, ...], geometry: tuple, isa: str | AssumedCpu | None = None,
) -> KernelFamily:
    """The kernel family FBGEMM's ``ConvFastPath`` picks for a 2-D conv (see ``isa.py``).

    Args:
        in_channels: C of the input.
        w_shape: (O, C/G, kh, kw).
        geometry: ((sh, sw), (ph, pw), (dh, dw), groups).
        isa: the CPU (groupwise needs enough groups to fill a register: 32 bytes on avx2,
            64 with AVX-512); None: ``assumed_cpu()``.
    Returns:
        "depthwise", "groupwise", "pointwise" or "im2col".
    """
    (o, cg, kh, kw), (stride, padding, dilation, groups) = w_shape, geometry
    cpu = isa if isinstance(isa, AssumedCpu) else assumed_cpu(isa)
    unit = all(d == 1 for d in dilation)
    if (groups == in_channels and o in (groups, 2 * groups) and groups % 8 == 0 and kh == kw
            and kh in (3, 5, 7) and all(s in (1, 2) for s in stride) and unit
            and all(p == (kh - 1) // 2 for p in padding)):
        return "depthwise"
    kg = o // groups
    if (cg == kg and cg in (2, 4, 8, 16) and groups >= _groups_together(cg, kg, cpu) and (kh, kw) == (3, 3)
            and padding == (1, 1) and unit and stride in ((1, 1), (2, 2))):
        return "groupwise"
    if (kh, kw) == (1, 1) and stride == (1, 1) and padding == (0, 0) and unit:
        return "pointwise"
    return "im2col"


def fbgemm_saturates(
    path: KernelFamily = "gemm", saturate: bool | None = None, isa: str | AssumedCpu | None = None,
) -> bool:
    """Whether FBGEMM saturates int16 pairs: ``saturate`` if given, else as ``isa`` does.

    None follows the assumed CPU (``isa.py``): without AVX512-VNNI every family saturates;
    with it only the depthwise kernel does.
    """
    if saturate is not None:
        return bool(saturate)
    return saturates(path, isa)


def pair_saturation(a: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``sum_p (sat16(s_p) - s_p)`` with ``s_p = a_2p*w_2p + a_2p+1*w_2p+1`` (raw codes).

    Args:
        a: (N, G, K, L) raw activation codes in reduction order, one group per G.
        w: (O, K) raw weight codes in the same order; output channel j belongs to group
            ``j // (O // G)``.
    Returns:
        (delta int32 (N, O, L), number of saturated pairs).
    """
    n, g, k, length = a.shape
    o = w.shape[0]
    if k % 2:  # FBGEMM pads K with zeros: the last product pairs with 0 and cannot saturate
        a, w, k = F.pad(a, (0, 0, 0, 1)), F.pad(w, (0, 1)), k + 1
    af = a.float().reshape(n, g, k // 2, 2, length)
    wf = w.float().reshape(g, o // g, k // 2, 2)
    delta = torch.zeros(n, g, o // g, length, dtype=torch.int32)
    count = 0
    # Only pairs that can leave int16 need the (slow) elementwise pass.
    reach = af.abs().amax((0, 4)) * wf.abs().amax(1)  # (G, P, 2): largest |product| per slot
    live = reach.sum(-1) > _I16_MAX  # (G, P)
    for gi in range(g):
        pairs = live[gi].nonzero().flatten()
        if pairs.numel() == 0:
            continue
        ag = af[:, gi, pairs]  # (N, P', 2, L)
        wg = wf[gi][:, pairs]  # (Og, P', 2)
        step = max(1, _CHUNK // max(1, n * wg.shape[0] * pairs.numel()))
        for l0 in range(0, length, step):
            al = ag[..., l0:l0 + step]
            s = torch.einsum("npl,op->nopl", al[:, :, 0], wg[..., 0]) + torch.einsum(
                "npl,op->nopl", al[:, :, 1], wg[..., 1]
            )  # (N, Og, P', L'): exact, |s| <= 65280
            d = s.clamp(_I16_MIN, _I16_MAX) - s
            count += int((d != 0).sum())
            delta[:, gi, :, l0:l0 + step] += torch.sum(d, 2, dtype=torch.float64).to(torch.int32)
    return delta.reshape(n, o, length), count


@torch.no_grad()
def pair_saturation_linear(x_q: torch.Tensor, w_q: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Saturation delta for ``linear``: pairs along the input features. Returns (delta (..., O), count)."""
    a = x_q.reshape(-1, x_q.shape[-1]).T[None, None]  # (1, 1, K, M)
    delta, count = pair_saturation(a, w_q)
    return delta[0].T.reshape(*x_q.shape[:-1], w_q.shape[0]), count


@torch.no_grad()
def pair_saturation_conv(
    x_q: torch.Tensor, za: int, w_q: torch.Tensor, geometry: tuple
) -> tuple[torch.Tensor, int]:
    """Saturation delta for ``conv2d`` in im2col (kh, kw, c) order, pads holding ``za``.

    Returns:
        (delta int32 (N, O, H', W'), count).
    """
    stride, padding, dilation, groups = geometry
    o, cg, kh, kw = w_q.shape
    n, _, h, wd = x_q.shape
    if cg == 1:
        return _depthwise_saturation(x_q, za, w_q, geometry)
    xp = F.pad(x_q.float(), (padding[1], padding[1], padding[0], padding[0]), value=float(za))
    cols = F.unfold(xp, (kh, kw), dilation=dilation, stride=stride)  # (N, C*kh*kw, L), (c, kh, kw) order
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (wd + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    a = cols.reshape(n, groups, cg, kh * kw, -1).transpose(2, 3).reshape(n, groups, kh * kw * cg, -1)
    wr = w_q.permute(0, 2, 3, 1).reshape(o, kh * kw * cg)  # (kh, kw, c) order
    delta, count = pair_saturation(a, wr)
    return delta.reshape(n, o, ho, wo), count


def _depthwise_saturation(x_q: torch.Tensor, za: int, w_q: torch.Tensor, geometry: tuple) -> tuple[torch.Tensor, int]:
    """``pair_saturation_conv`` for one input channel per group: the reduction is the taps in
    (kh, kw) order, so pair p adds taps (2p, 2p+1), each a strided view of the padded input.

    Only output channels whose pair can leave int16 (``amax_c * (|w_2p| + |w_2p+1|) > 32767``)
    are computed; a last odd tap pairs with FBGEMM's zero and cannot saturate
    (``255 * 128 < 32767``). Returns (delta int32 (N, O, H', W'), count).
    """
    (sh, sw), (ph, pw), (dh, dw), _ = geometry
    o, _, kh, kw = w_q.shape
    n, c, h, wd = x_q.shape
    mult = o // c  # output channel j reads input channel j // mult
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    delta = torch.zeros(n, o, ho, wo, dtype=torch.int32)
    taps = w_q.reshape(o, kh * kw).to(torch.int32)  # (O, T) in (kh, kw) order
    amax = x_q.amax((0, 2, 3)).to(torch.int32).repeat_interleave(mult)  # (O,)
    if ph or pw:
        amax = amax.clamp_min(za)  # padded pixels hold za
    xp = F.pad(x_q.to(torch.int32), (pw, pw, ph, ph), value=int(za))  # (N, C, H+2ph, W+2pw)
    count = 0
    for t in range(0, kh * kw - 1, 2):
        reach = amax * (taps[:, t].abs() + taps[:, t + 1].abs())  # (O,) largest |pair sum|
        live = (reach > _I16_MAX).nonzero().flatten()
        if live.numel() == 0:
            continue
        s = None
        for tap in (t, t + 1):
            i, j = divmod(tap, kw)
            a = xp[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw]
            a = a.index_select(1, live // mult)  # (N, O', H', W')
            prod = a.mul_(taps[live, tap].reshape(1, -1, 1, 1))
            s = prod if s is None else s.add_(prod)  # exact: |s| <= 65280
        d = s.clamp(_I16_MIN, _I16_MAX).sub_(s)  # (N, O', H', W')
        count += int(d.count_nonzero())
        delta.index_add_(1, live, d)
    return delta, count
