"""backend="onnx" against a numpy transcription of onnx/reference/ops/op_qlinear_{conv,matmul}.py.

The reference (onnx/onnx, ``QLinearConv._run`` / ``QLinearMatMul._run``) computes the int32
accumulator (bias included), then ``R = acc * (x_scale * w_scale / y_scale)`` with float32
scale arrays (numpy promotes the product with int32 to float64), adds ``y_zero_point``
*before* ``np.round``/``np.rint`` and clips to the output dtype (that of ``y_zero_point``).
One deliberate difference: for per-channel weights the conv reference multiplies by a (O,)
scale array that numpy broadcasts along the *last* (width) axis; the transcription below
applies it per output channel, as the operator's definition says.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import qcal.int8 as qi


def np_conv(x, w, bias, stride, pad, dil, groups):
    """Direct int64 NCHW convolution (what ``_conv_implementation`` computes on int32 arrays)."""
    n, _, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    ho = (h + 2 * pad[0] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (wd + 2 * pad[1] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((n, o, ho, wo), dtype=np.int64)
    opg = o // groups
    for j in range(o):
        g = j // opg
        for i in range(kh):
            for k in range(kw):
                patch = xp[:, g * cg:(g + 1) * cg, i * dil[0]:i * dil[0] + stride[0] * ho:stride[0],
                           k * dil[1]:k * dil[1] + stride[1] * wo:stride[1]]
                out[:, j] += np.einsum("nchw,c->nhw", patch.astype(np.int64), w[j, :, i, k].astype(np.int64))
    if bias is not None:
        out += bias.astype(np.int64)[None, :, None, None]
    return out


def qlinear_conv_ref(x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, bias, stride, pad, dil, groups):
    X = x.astype(np.int32) - x_zp
    W = w.astype(np.int32) - np.asarray(w_zp).reshape(-1, 1, 1, 1)
    res = np_conv(X, W, bias, stride, pad, dil, groups).astype(np.int32)
    scale = (x_scale * w_scale / y_scale).reshape(1, -1, 1, 1)  # float32 arrays
    R = res * scale
    R += y_zp
    lo, hi = (-128, 127) if y_zp.dtype == np.int8 else (0, 255)
    return np.round(np.clip(R, lo, hi)).astype(y_zp.dtype)


def qlinear_matmul_ref(a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp):
    A = a.astype(np.int32) - a_zp.astype(np.int32)
    B = b.astype(np.int32) - b_zp.astype(np.int32)
    D = np.matmul(A, B) * (a_scale * b_scale / y_scale)
    D += y_zp
    info = np.iinfo(y_zp.dtype)
    return np.clip(np.rint(D), info.min, info.max).astype(y_zp.dtype)


@pytest.mark.parametrize("seed", range(12))
def test_qlinear_conv_matches_the_reference(seed):
    rng = np.random.default_rng(seed)
    x_dtype = np.int8 if seed % 2 else np.uint8
    w_dtype = np.uint8 if seed % 3 == 0 else np.int8
    y_dtype = np.int8 if seed % 4 < 2 else np.uint8
    groups = [1, 2, 4][seed % 3]
    c, o = 4 * groups // groups * groups, 2 * groups
    info_x, info_w = np.iinfo(x_dtype), np.iinfo(w_dtype)
    x = rng.integers(info_x.min, info_x.max + 1, (2, c, 7, 6)).astype(x_dtype)
    w = rng.integers(info_w.min, info_w.max + 1, (o, c // groups, 3, 2)).astype(w_dtype)
    x_scale = np.float32(2.0 ** -rng.integers(2, 6)) if seed < 6 else np.float32(rng.random() * 0.1 + 0.01)
    w_scale = (2.0 ** -rng.integers(2, 8, o)).astype(np.float32) if seed % 2 else np.float32(0.0078125)
    y_scale = np.float32(2.0 ** -rng.integers(-4, 2)) if seed < 6 else np.float32(rng.random() + 0.1)
    x_zp = x_dtype(rng.integers(info_x.min, info_x.max + 1))
    w_zp = rng.integers(-3, 4, o).astype(np.int64) + (128 if w_dtype == np.uint8 else 0)
    y_zp = np.array(rng.integers(-20, 20) + (0 if y_dtype == np.int8 else 128), dtype=y_dtype)
    bias = rng.integers(-5000, 5000, o).astype(np.int32) if seed % 3 else None
    stride, pad, dil = (2, 1), (1, 0), (1, 2)
    ref = qlinear_conv_ref(x, x_scale, int(x_zp), w, w_scale, w_zp, y_scale, y_zp, bias, stride, pad, dil, groups)
    out = qi.conv2d(
        torch.from_numpy(x), float(x_scale), int(x_zp), torch.from_numpy(w),
        torch.from_numpy(np.atleast_1d(w_scale)).double() if np.ndim(w_scale) else float(w_scale),
        torch.from_numpy(w_zp), None if bias is None else torch.from_numpy(bias),
        float(y_scale), torch.tensor(y_zp.item(), dtype=torch.int8 if y_dtype == np.int8 else torch.uint8),
        stride=stride, padding=pad, dilation=dil, groups=groups, backend="onnx",
    )
    assert out.dtype == (torch.int8 if y_dtype == np.int8 else torch.uint8)
    assert np.array_equal(out.numpy(), ref)


@pytest.mark.parametrize("seed", range(8))
def test_qlinear_matmul_matches_the_reference(seed):
    rng = np.random.default_rng(100 + seed)
    a_dtype, b_dtype = (np.uint8, np.int8) if seed % 2 else (np.int8, np.uint8)
    a = rng.integers(np.iinfo(a_dtype).min, np.iinfo(a_dtype).max + 1, (5, 37)).astype(a_dtype)
    b = rng.integers(np.iinfo(b_dtype).min, np.iinfo(b_dtype).max + 1, (37, 9)).astype(b_dtype)
    a_scale, b_scale = np.float32(2.0**-4), (2.0 ** -rng.integers(3, 9, 9)).astype(np.float32)
    y_scale = np.float32(2.0 ** -rng.integers(-3, 3))
    a_zp, b_zp = np.array(3, dtype=a_dtype), np.array(2, dtype=b_dtype)
    y_zp = np.array(5, dtype=np.int8 if seed % 4 < 2 else np.uint8)
    ref = qlinear_matmul_ref(a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp)
    out = qi.linear(
        torch.from_numpy(a), float(a_scale), 3, torch.from_numpy(np.ascontiguousarray(b.T)),
        torch.from_numpy(b_scale).double(), 2, None, float(y_scale),
        torch.tensor(5, dtype=torch.int8 if y_zp.dtype == np.int8 else torch.uint8), backend="onnx",
    )
    assert np.array_equal(out.numpy(), ref)


def test_hand_checked_ties_round_after_adding_the_zero_point():
    # acc 20 * 0.125 = 2.5; + zp 3 = 5.5 -> 6 (uint8); acc -20 with zp -1: -3.5 -> -4 (int8)
    x = torch.tensor([[20, -20]], dtype=torch.int8)
    w = torch.tensor([[1, 0], [0, 1]], dtype=torch.int8)
    u = qi.linear(x, 0.5, 0, w, 0.25, 0, None, 1.0, torch.tensor(3, dtype=torch.uint8), backend="onnx")
    s = qi.linear(x, 0.5, 0, w, 0.25, 0, None, 1.0, torch.tensor(-1, dtype=torch.int8), backend="onnx")
    assert u.tolist() == [[6, 0]]  # -2.5 + 3 = 0.5 -> rint 0
    assert s.tolist() == [[2, -4]]  # 2.5 - 1 = 1.5 -> 2
