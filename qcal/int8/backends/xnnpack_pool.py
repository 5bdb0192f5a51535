"""XNNPACK's qs8 global average pooling (``mean`` over H and W), as ExecuTorch's delegate runs it.

ExecuTorch lowers ``adaptive_avg_pool2d(x, 1)`` / ``mean(x, [2, 3], keepdim=True)`` to
XNNPACK's global average pooling, which XNNPACK runs as its ``mean`` reduction
(``src/operators/reduce-nd.c``, ``xnn_init_qs8_reduce_scalar_params`` and
``xnn_update_qs8_reduce_scalar_params`` in ``src/microparams-init.c``, the int32 -> qs8
``convert`` of ``src/reference/unary-elementwise.cc``):

    S = sum of the raw codes over the N = H*W window, in int32 (no zero point subtracted)
    scale = f32(f32(sx / sy) * f32(1 / N))
    zp' = f32(zy - f32(f32(N * zx) * scale))             # the input zero point folded in, in float
    out = clamp(nearbyint(f32(f32(S) * scale) + zp'), -128, 127)

The zero point is added *before* rounding (half to even), unlike XNNPACK's conv/linear. Checked
bit for bit against the delegate on an AMD EPYC (AVX-512-VNNI) in tests/export/test_pt2e_pool.py
(windows 5x5 to 13x13, with and without a ReLU before; XNNPACKQuantizer shares the input's qparams
with the output, so ``sx / sy`` is 1 there). Older XNNPACK releases (the ``gavgpool`` kernels)
subtracted ``N * zx`` in int32 and added ``zy`` after rounding; the delegate here does not.
"""

from __future__ import annotations

import torch

__all__ = ["xnnpack_mean_hw", "xnnpack_mean_params"]


def xnnpack_mean_params(n: int, sx: float, zx: int, sy: float, zy: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zp') of the module doc, as float32 scalars."""
    f32 = torch.float32
    scale = (torch.tensor(sx, dtype=f32) / torch.tensor(sy, dtype=f32)) * (torch.tensor(1.0, dtype=f32) / n)
    zp = torch.tensor(float(zy), dtype=f32) - torch.tensor(float(n * zx), dtype=f32) * scale
    return scale, zp


def xnnpack_mean_hw(q: torch.Tensor, sx: float, zx: int, sy: float, zy: int) -> torch.Tensor:
    """XNNPACK's qs8 mean of (N, C, H, W) codes over H and W: (N, C, 1, 1) int8 codes."""
    n = q.shape[-1] * q.shape[-2]
    total = q.to(torch.int64).sum((-2, -1), keepdim=True)  # exact: |S| <= 128 * N
    scale, zp = xnnpack_mean_params(n, sx, zx, sy, zy)
    return torch.round(total.float() * scale + zp).clamp(-128, 127).to(torch.int8)
