"""Integer conv2d and linear on plain integer tensors, bit-exact against each backend.

One-shot forms of ``packed.py``: each call runs the layer once, with the weights packed on
first use and the pack reused while the same, unmodified tensors come back (``pack_cache.py``).
``out = clamp(requant(sum_k (a_k - za)(w_jk - zw_j)) + zo)`` with the backend's own bias
rule, rounding and zero-point order (``requant.py``), and under fbgemm the int16 pair
saturation its kernel applies on this CPU (``saturation.py``).
"""

from __future__ import annotations

import torch

from qcal.int8.cpu.isa import InstructionSet
from qcal.int8.pack_cache import cached_pack
from qcal.int8.packed import KernelResult, pack_conv2d, pack_linear
from qcal.schemes import Backend

__all__ = ["conv2d", "conv2d_detailed", "linear", "linear_detailed"]


def _conv_pack(w_q, w_scale, w_zero_point, bias, stride, padding, dilation, groups, backend):
    options = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups, "backend": backend}
    return cached_pack("conv2d", pack_conv2d, (w_q, w_scale, w_zero_point, bias), options)


@torch.no_grad()
def conv2d(
    x_q, x_scale, x_zero_point, w_q, w_scale, w_zero_point, bias, out_scale, out_zero_point,
    *, stride=1, padding=0, dilation=1, groups=1, relu=False, backend: Backend = "fbgemm",
    saturate: bool | None = None, isa: InstructionSet | None = None,
) -> torch.Tensor:
    """Quantized conv2d on integer codes, bit for bit as ``backend`` computes it.

    ``out = clamp(requant(sum (a - za)(w - zw)) + zo)`` with the backend's rounding and bias
    rule (``requant.py``). Under fbgemm, ``saturate`` (None: as the kernel of the CPU in
    ``isa`` does, see ``isa.py``; None: ``QCAL_CPU`` or this machine) applies FBGEMM's int16
    pair saturation.

    Args:
        x_q: (N, C, H, W) uint8 codes (int8 allowed for onnx/q31).
        x_scale, x_zero_point: the input's quantization.
        w_q, w_scale, w_zero_point, bias: see ``pack_conv2d``.
        out_scale, out_zero_point: the output's; the output dtype is out_zero_point's when it
            is a uint8/int8 tensor, else uint8.
    Returns:
        (N, O, H', W') codes.

    Example: x=[[[[20]]]] (sa=0.5, za=0), w=[[[[1]]]] (sw=0.25), so=1, zo=3: acc 20, y*M = 2.5
    -> fbgemm rint(2.5) + 3 = 5; onnx rint(2.5 + 3) = 6.
    """
    packed = _conv_pack(w_q, w_scale, w_zero_point, bias, stride, padding, dilation, groups, backend)
    return packed(x_q, x_scale, x_zero_point, out_scale, out_zero_point, relu=relu, saturate=saturate, isa=isa)


@torch.no_grad()
def conv2d_detailed(
    x_q, x_scale, x_zero_point, w_q, w_scale, w_zero_point, bias, out_scale, out_zero_point,
    *, stride=1, padding=0, dilation=1, groups=1, relu=False, backend: Backend = "fbgemm",
    saturate: bool | None = None, isa: InstructionSet | None = None,
) -> KernelResult:
    """``conv2d`` returning a ``KernelResult(out, acc, saturated_pairs, requant)``."""
    packed = _conv_pack(w_q, w_scale, w_zero_point, bias, stride, padding, dilation, groups, backend)
    return packed(x_q, x_scale, x_zero_point, out_scale, out_zero_point, relu=relu,
                  saturate=saturate, detailed=True, isa=isa)


@torch.no_grad()
def linear(
    x_q, x_scale, x_zero_point, w_q, w_scale, w_zero_point, bias, out_scale, out_zero_point,
    *, relu=False, backend: Backend = "fbgemm", saturate: bool | None = None, isa: InstructionSet | None = None,
) -> torch.Tensor:
    """Quantized linear on integer codes: (..., K) x (O, K) -> (..., O); see ``conv2d``."""
    packed = cached_pack("linear", pack_linear, (w_q, w_scale, w_zero_point, bias), {"backend": backend})
    return packed(x_q, x_scale, x_zero_point, out_scale, out_zero_point, relu=relu, saturate=saturate, isa=isa)


@torch.no_grad()
def linear_detailed(
    x_q, x_scale, x_zero_point, w_q, w_scale, w_zero_point, bias, out_scale, out_zero_point,
    *, relu=False, backend: Backend = "fbgemm", saturate: bool | None = None, isa: InstructionSet | None = None,
) -> KernelResult:
    """``linear`` returning a ``KernelResult(out, acc, saturated_pairs, requant)``."""
    packed = cached_pack("linear", pack_linear, (w_q, w_scale, w_zero_point, bias), {"backend": backend})
    return packed(x_q, x_scale, x_zero_point, out_scale, out_zero_point, relu=relu,
                  saturate=saturate, detailed=True, isa=isa)
