"""The native per-tensor quantize (one C pass: ``rint(fma(x, f32(1/scale), zp))``) against torch's
own ``quantize_per_tensor`` and qcal's float path, ties and extremes included."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qcal.int8 import native
from qcal.int8.layer_ops import quantize_codes
from qcal.qparams import quantize

pytestmark = pytest.mark.skipif(not native.available(), reason=f"native kernel not built here: {native.why_unavailable()}")


def _values(data, scale: float, zp: int) -> torch.Tensor:
    """Random values, values on and next to half steps (ties), extremes and a NaN."""
    n = data.draw(st.integers(1, 300))
    k = torch.tensor(data.draw(st.lists(st.integers(-400, 400), min_size=n, max_size=n)), dtype=torch.float32)
    s = torch.tensor(scale, dtype=torch.float32)
    ties = (k + 0.5 - zp) * s
    near = torch.nextafter(ties, torch.full_like(ties, math.inf))
    noise = torch.tensor(data.draw(st.lists(st.floats(-1e4, 1e4, width=32), min_size=n, max_size=n)))
    extremes = torch.tensor([0.0, -0.0, 1e30, -1e30, math.inf, -math.inf, float("nan")])
    return torch.cat([ties, near, noise, extremes])


@settings(max_examples=60, deadline=None)
@given(data=st.data(), scale=st.floats(0.0001220703125, 8.0, width=32), zp=st.integers(0, 255), signed=st.booleans())
def test_native_quantize_equals_torch_and_the_float_path(data, scale, zp, signed):
    dtype, name = (torch.int8, "qint8") if signed else (torch.uint8, "quint8")
    zp = zp - 128 if signed else zp
    x = _values(data, scale, zp)
    got = native.quantize(x, scale, zp, dtype)
    assert got.dtype == dtype and got.shape == x.shape
    finite = ~torch.isnan(x)
    want = quantize(x, scale, zp, name)
    assert int((got[finite] != want[finite]).sum()) == 0
    assert int(got[~finite].to(torch.int32).abs().sum()) == 0  # NaN codes as 0
    real = torch.quantize_per_tensor(x[finite], scale, zp, torch.qint8 if signed else torch.quint8).int_repr()
    assert int((got[finite] != real).sum()) == 0


def test_the_program_quantize_takes_the_native_pass_for_big_inputs_and_keeps_the_layout():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 40, 40, generator=g).contiguous(memory_format=torch.channels_last) * 3
    out = quantize_codes(x, 0.02, 131, "quint8", backend="fbgemm")
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, quantize(x, 0.02, 131, "quint8"))
    assert torch.equal(out, torch.quantize_per_tensor(x, 0.02, 131, torch.quint8).int_repr())
