"""oneDNN's u8 x s8 convolution and matmul as an exact accumulator engine (``Accumulator``'s
``onednn`` method): the start-up probes that decide whether it is exact on this CPU, and the
calls, on plain uint8/int8 tensors with unit scales and a float32 output (``float(acc)``).

qcal pads the input itself with the zero point and hands oneDNN an unpadded problem
(``_onednn_padded_conv``): oneDNN's own padding runs CPU-specific code.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from qcal.int8.cpu.flags import has_vnni

__all__ = ["onednn_exact", "onednn_pairs_exact"]


@functools.lru_cache(maxsize=1)
def onednn_exact() -> bool:
    """True when oneDNN's int8 convolution and matmul return exact accumulators here.

    Probed once at the saturation extreme (activations 255, weights +-127, where an int16
    pair sum would overflow) against a float64 reference.
    """
    if not has_vnni():
        return False
    try:
        x = torch.full((1, 16, 4, 4), 255, dtype=torch.uint8)
        w = torch.full((16, 16, 3, 3), 127, dtype=torch.int8)
        w[::2] = -127
        acc = _onednn_conv(x, 0, w, ((1, 1), (1, 1), (1, 1), 1))
        ref = F.conv2d(x.double(), w.double(), padding=1)
        xl, wl = x.reshape(16, 16), w[:, :, 0, 0].contiguous()
        lin = _onednn_linear(xl, 0, wl)
        return bool(torch.equal(acc.double(), ref)) and bool(
            torch.equal(lin.double(), xl.double() @ wl.double().T)
        )
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


@functools.lru_cache(maxsize=1)
def onednn_pairs_exact() -> bool:
    """True when oneDNN's int8 convolution and matmul are exact whenever no int16 pair of
    products can saturate (``2 * max a * max |w| <= 32767``), VNNI or not.

    Probed once at that extreme: activations 127, weights all 127 or all -128 per output
    channel (a kernel summing four products in int16 would overflow there), for a 3x3, a
    1x1, a strided grouped and a depthwise convolution with a zero point, and a matmul.
    """
    try:
        for c, o, k, groups, za in ((16, 16, 3, 1, 0), (64, 32, 1, 1, 5), (32, 32, 3, 4, 3), (32, 32, 3, 32, 7)):
            x = torch.full((2, c, 7, 7), 127, dtype=torch.uint8)
            x[1, :, ::2] = 0
            w = torch.full((o, c // groups, k, k), 127, dtype=torch.int8)
            w[::2] = -128
            geometry = ((1 + (groups > 1),) * 2, ((k - 1) // 2,) * 2, (1, 1), groups)
            acc = _onednn_conv(x.contiguous(memory_format=torch.channels_last), za, w, geometry)
            xc = F.pad(x.double() - za, ((k - 1) // 2,) * 4)
            ref = F.conv2d(xc, w.double(), None, geometry[0], 0, 1, groups)
            if not torch.equal(acc.double(), ref):
                return False
        xl, wl = torch.full((4, 96), 127, dtype=torch.uint8), torch.full((8, 96), 127, dtype=torch.int8)
        wl[::2] = -128
        lin = _onednn_linear(xl, 3, wl)
        return bool(torch.equal(lin.double(), (xl.double() - 3) @ wl.double().T))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def _onednn_conv(x, za, w, geometry):
    stride, padding, dilation, groups = geometry
    o = w.shape[0]
    ones, zeros = torch.ones(o), torch.zeros(o, dtype=torch.long)
    packed = _onednn_conv_pack(w, geometry)
    return torch.ops.onednn.qconv2d_pointwise(
        x, 1.0, int(za), packed, ones, zeros, None, list(stride), list(padding), list(dilation),
        groups, 1.0, 0, torch.float32, "none", [], "",
    )


def _onednn_padded_conv(x, za, packed, kernel, bias, geometry):
    """oneDNN's ``float(sum (a - za) w)`` (+ ``bias``) on ``x`` padded here with ``za``, never by oneDNN.

    oneDNN's own padding runs CPU-dependent code: on AVX-512 VNNI / AMX CPUs its brgemm
    convolutions (not the AVX2 kernels) have read stale bytes in padded columns and mis-applied
    the zero-point padding compensation (oneDNN issue #5080: small-IC NHWC convolutions with
    width padding), the likely cause of wrong border accumulators seen only on such a CPU.
    Explicit zero-point pixels contribute ``(za - za) w = 0`` whatever kernel runs; ``packed``
    must be packed with padding 0 (``Accumulator._packed``); ``kernel``: the weights' (O, kh, kw).
    """
    o = kernel[0]
    stride, (ph, pw), dilation, groups = geometry
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph), value=int(za))
    x, stride = _one_wide(x, kernel[1:], stride, dilation)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return torch.ops.onednn.qconv2d_pointwise(
        x, 1.0, int(za), packed, torch.ones(o), torch.zeros(o, dtype=torch.long), bias,
        list(stride), [0, 0], list(dilation), groups, 1.0, 0, torch.float32, "none", [], "",
    )


def _one_wide(x, kernel, stride, dilation):
    """(x, stride) with every output dimension of size 1 computed at stride 1 from the rows or
    columns its one window reads: the same sums. oneDNN's AVX-512 kernels got some convolutions
    with a one-column output, a column stride above 1 and a row stride of 1 wrong (deterministic,
    shape-dependent: 9 of 15 sums of a 5x3 input, kernel 1x2, stride (1, 2) on an AVX-512-VNNI
    Xeon); at stride 1 they were exact on every shape tried."""
    stride = list(stride)
    for axis in (0, 1):
        if stride[axis] == 1:
            continue
        footprint = dilation[axis] * (kernel[axis] - 1) + 1
        if (x.shape[2 + axis] - footprint) // stride[axis] == 0:  # one output along this axis
            x = x.narrow(2 + axis, 0, footprint)
            stride[axis] = 1
    return x, stride


def _onednn_conv_pack(w, geometry):
    stride, padding, dilation, groups = geometry
    return torch.ops.onednn.qconv_prepack(
        w, torch.ones(w.shape[0]), 1.0, 0, list(stride), list(padding), list(dilation), groups, None
    )


def _onednn_linear(x, za, w, packed=None, bias=None):
    o = w.shape[0]
    packed = torch.ops.onednn.qlinear_prepack(w, None) if packed is None else packed
    return torch.ops.onednn.qlinear_pointwise(
        x, 1.0, int(za), packed, torch.ones(o), torch.zeros(o, dtype=torch.long), bias,
        1.0, 0, torch.float32, "none", [], "",
    )
