"""The ort flavour's fast paths give the numbers of the float formulas they replace.

``ort_clip`` maps codes through a cached 256-entry table (a clamp when the table is one),
``ort_add`` looks pairs up in one native pass, ``ort_dequantize`` subtracts the zero point in
float32: each checked here against the formula it stands for (the whole-model comparisons with
onnxruntime are tests/export/test_onnx_export.py and tests/int8/test_int8_ort.py).
"""

from __future__ import annotations

import pytest
import torch

from qcal.int8.backends.ort import (
    _add_table,
    ort_add,
    ort_clip,
    ort_dequantize,
    ort_global_avg_pool,
    ort_quantize,
)

DTYPES = [torch.uint8, torch.int8]


def _codes(gen, dtype, shape):
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max + 1, shape, generator=gen, dtype=torch.int32).to(dtype)


def _qparams(gen, dtype):
    scale = float(torch.empty(1).uniform_(1e-3, 0.2, generator=gen).float())
    info = torch.iinfo(dtype)
    return scale, int(torch.randint(info.min, info.max + 1, (1,), generator=gen))


@pytest.mark.parametrize("dtype", DTYPES)
def test_dequantize_equals_the_int32_formula(dtype):
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        q = _codes(gen, dtype, (3, 50))
        s, z = _qparams(gen, dtype)
        ref = (q.to(torch.int32) - z).float() * torch.tensor(s, dtype=torch.float32)
        assert torch.equal(ort_dequantize(q, s, z), ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_table_equals_the_float_path(dtype):
    gen = torch.Generator().manual_seed(2)
    for i in range(40):
        q = _codes(gen, dtype, (2, 3, 5, 7))
        s, z = _qparams(gen, dtype)
        lo, hi = (0.0, 6.0) if i % 2 else sorted(float(v) for v in torch.randn(2, generator=gen) * 4)
        ref = ort_quantize(ort_dequantize(q, s, z).clamp_(lo, hi), s, z, dtype)
        out = ort_clip(q, s, z, lo, hi)
        assert out.dtype == dtype and torch.equal(out, ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "broadcast"])
def test_add_equals_the_table_indexed_by_pairs(dtype, layout):
    gen = torch.Generator().manual_seed(3)
    lo = torch.iinfo(dtype).min
    for _ in range(5):
        a, b = _codes(gen, dtype, (2, 8, 5, 6)), _codes(gen, dtype, (2, 8, 5, 6))
        if layout == "channels_last":
            a, b = a.contiguous(memory_format=torch.channels_last), b.contiguous(memory_format=torch.channels_last)
        elif layout == "broadcast":
            b = b[:1, :, :1]
        (sa, za), (sb, zb), (so, zo) = (_qparams(gen, dtype) for _ in range(3))
        table = _add_table(sa, za, sb, zb, so, zo, dtype)
        x, y = torch.broadcast_tensors(a, b)
        ref = table[((x.to(torch.int64) - lo) * 256 + (y.to(torch.int64) - lo)).reshape(-1)].reshape(x.shape)
        out = ort_add(a, sa, za, b, sb, zb, so, zo)
        assert out.dtype == dtype and out.shape == ref.shape and torch.equal(out, ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_global_avg_pool_float_sums_equal_the_int64_formula(dtype):
    gen = torch.Generator().manual_seed(4)
    for hw in [(1, 1), (7, 7), (15, 13)]:
        q = _codes(gen, dtype, (2, 5, *hw))
        (sx, zx), (sy, zy) = _qparams(gen, dtype), _qparams(gen, dtype)
        lo, hi = torch.iinfo(dtype).min, torch.iinfo(dtype).max
        size = hw[0] * hw[1]
        acc = q.to(torch.int64).sum((-2, -1), keepdim=True) - zx * size
        m = torch.tensor(sx, dtype=torch.float32) / (torch.tensor(sy, dtype=torch.float32) * float(size))
        ref = torch.round((acc.float() * m).clamp_(lo - zy, hi - zy)).add_(zy).to(dtype)
        assert torch.equal(ort_global_avg_pool(q, sx, zx, sy, zy), ref)


def test_quantize_divides_and_leaves_a_grad_input_alone():
    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(4, 300, generator=gen) * 3).requires_grad_()
    for s, z in [(0.02, 128), (0.5, 3), (1 / 3, 0)]:
        t = x.detach() / torch.tensor(s, dtype=torch.float32)
        ref = torch.round(t.clamp(-z, 255 - z)).add_(z).to(torch.uint8)
        assert torch.equal(ort_quantize(x, s, z), ref)
    assert x.grad is None and ort_quantize(torch.tensor([0.25]), 0.5, 3).item() == 3
