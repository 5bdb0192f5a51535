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
can saturate. Where codes are larger, only the pairs that can reach int16's limits are
computed (``pair_sites.py``).
"""

from __future__ import annotations

import torch

from qcal.int8.common.pair_sites import (
    PairPlan,
    conv_pair_delta,
    depthwise_pair_delta,
    linear_pair_delta,
    pair_plan,
)
from qcal.int8.cpu.isa import AssumedCpu, KernelFamily, assumed_cpu, saturates

__all__ = [
    "ConvPath",
    "fbgemm_conv_path",
    "fbgemm_saturates",
    "pair_saturation_conv",
    "pair_saturation_linear",
]

ConvPath = KernelFamily  # the name this module used before the families were split


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


@torch.no_grad()
def pair_saturation_linear(
    x_q: torch.Tensor, w_q: torch.Tensor, plan: PairPlan | None = None,
) -> tuple[torch.Tensor, int]:
    """Saturation delta for ``linear``: pairs along the input features (``plan``: the layer's
    ``pair_plan(w_q)``, built here if None). Returns (delta (..., O), count)."""
    return linear_pair_delta(plan or pair_plan(w_q), x_q)


@torch.no_grad()
def pair_saturation_conv(
    x_q: torch.Tensor, za: int, w_q: torch.Tensor, geometry: tuple, plan: PairPlan | None = None,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Saturation delta for ``conv2d`` in im2col (kh, kw, c) order, pads holding ``za``.

    ``plan``: the layer's ``pair_plan(w_q, geometry)`` when the caller keeps one (built here if
    None). ``out``: an int32 channels_last accumulator to add the delta into, in place.

    Returns:
        (delta int32 (N, O, H', W') channels_last, or ``out`` plus it; count).
    """
    plan = plan or pair_plan(w_q, geometry)
    if w_q.shape[1] == 1:  # pairs of taps of one channel
        return depthwise_pair_delta(plan, x_q, za, out)
    return conv_pair_delta(plan, x_q, za, out)
