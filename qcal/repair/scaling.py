"""The arithmetic of cross-layer equalization on one pair: channel ranges, scales, rescaling.

For a pair (A, B) (``qcal.repair.pairs``), A's output channel ``i`` is B's input channel
``i`` (through a flatten, a run of ``k`` consecutive features). Dividing A's row ``i`` (weight
and bias) by ``s_i`` and multiplying B's weights that read channel ``i`` by ``s_i`` keeps
the function; ``s_i = sqrt(r1_i / r2_i)`` makes both ranges ``sqrt(r1_i r2_i)`` (Nagel et
al. 2019, eq. 9), where ``r1_i`` is the largest ``|w|`` of A's output channel ``i`` and
``r2_i`` that of B's weights reading it.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["absorb_bias", "input_index", "input_ranges", "output_ranges", "pair_scales", "rescale"]


def output_ranges(a: nn.Module) -> torch.Tensor:
    """max |w| per output channel of A (float64)."""
    return a.weight.detach().double().abs().reshape(a.weight.shape[0], -1).amax(dim=1)


def input_index(b: nn.Module, channels: int) -> torch.Tensor:
    """For B's weight indexed over its first two dims, the input channel each entry reads.

    A conv with ``g`` groups: output ``o`` is in group ``o // (O/g)``, its weight column ``j``
    reads input channel ``group * Cin/g + j``. A linear after a flatten: feature ``f`` is
    channel ``f // k`` (``k = in_features / channels``).
    """
    out = b.weight.shape[0]
    if isinstance(b, nn.Conv2d):
        per_group = b.weight.shape[1]
        group = torch.arange(out) // (out // b.groups)
        return group[:, None] * per_group + torch.arange(per_group)[None, :]
    k = b.in_features // channels
    return (torch.arange(b.in_features) // k)[None, :].expand(out, -1)


def input_ranges(b: nn.Module, index: torch.Tensor, channels: int) -> torch.Tensor:
    """max |w| of B's weights that read each input channel (float64)."""
    w = b.weight.detach().double().abs()
    per_entry = w.amax(dim=tuple(range(2, w.dim()))) if w.dim() > 2 else w
    out = torch.zeros(channels, dtype=torch.float64)
    return out.scatter_reduce(0, index.reshape(-1), per_entry.reshape(-1), reduce="amax")


def pair_scales(r1: torch.Tensor, r2: torch.Tensor, lower: torch.Tensor | None = None,
                fixed: torch.Tensor | None = None) -> torch.Tensor:
    """``sqrt(r1 / r2)`` per channel; 1 where either range is 0 (nothing to balance).

    ``lower`` bounds the scales from below (the ReLU6 rule: ``x / s`` must stay below 6 on
    the data seen); ``fixed`` marks channels that must keep ``s = 1`` (they clip).
    """
    ok = (r1 > 0) & (r2 > 0)
    s = torch.where(ok, torch.sqrt(r1 / torch.where(ok, r2, 1.0)), torch.ones_like(r1))
    if lower is not None:
        s = torch.maximum(s, lower)
    if fixed is not None:
        s = torch.where(fixed, torch.ones_like(s), s)
    return s


@torch.no_grad()
def rescale(a: nn.Module, b: nn.Module, index: torch.Tensor, s: torch.Tensor) -> None:
    """A's output channel ``i`` divided by ``s_i``, B's input channel ``i`` multiplied by it, in place."""
    shape = (-1,) + (1,) * (a.weight.dim() - 1)
    a.weight.copy_((a.weight.double() / s.reshape(shape)).to(a.weight.dtype))
    if a.bias is not None:
        a.bias.copy_((a.bias.double() / s).to(a.bias.dtype))
    per_entry = s[index]
    per_entry = per_entry.reshape(per_entry.shape + (1,) * (b.weight.dim() - per_entry.dim()))
    b.weight.copy_((b.weight.double() * per_entry).to(b.weight.dtype))


@torch.no_grad()
def absorb_bias(a: nn.Module, b: nn.Module, index: torch.Tensor, c: torch.Tensor) -> None:
    """High-bias absorption: A's bias lowered by ``c`` (>= 0), B's bias raised by what B makes
    of ``c``, in place; exact where A's pre-activation stays >= c (ReLU(x - c) = ReLU(x) - c)
    and B's input has no zero padding."""
    if a.bias is None:
        return
    a.bias.copy_((a.bias.double() - c).to(a.bias.dtype))
    per_entry = c[index]
    w = b.weight.detach().double()
    shift = (w * per_entry.reshape(per_entry.shape + (1,) * (w.dim() - per_entry.dim()))).reshape(w.shape[0], -1).sum(1)
    if b.bias is None:
        b.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=b.weight.dtype), requires_grad=False)
    b.bias.copy_((b.bias.double() + shift).to(b.bias.dtype))
