"""Properties of the integer engine over random layers: every backend, both output dtypes.

Whatever the scales, codes and backend, conv2d and linear return codes of the output dtype
inside its range (never wrapped around): a value the accumulator puts beyond the range
saturates at the nearer end, and a fused ReLU never goes below the output zero point.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qcal.int8 as qi

RANGES = {torch.uint8: (0, 255), torch.int8: (-128, 127)}


@st.composite
def layers(draw):
    """A random conv2d or linear layer with inputs, as keyword arguments of qi.*_detailed."""
    backend = draw(st.sampled_from(qi.BACKENDS))
    kind = draw(st.sampled_from(["conv2d", "linear"]))
    out_dtype = draw(st.sampled_from([torch.uint8, torch.int8]))
    # only onnx/q31 take int8 activations; conv2d on them is tested apart (see below)
    signed_x = backend in ("onnx", "q31") and kind == "linear" and draw(st.booleans())
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    c, o = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    shape, w_shape = ((2, c, 5, 5), (o, c, 3, 3)) if kind == "conv2d" else ((3, c * 4), (o, c * 4))
    x = torch.randint(0, 256, shape, generator=g, dtype=torch.int16)
    x = (x - 128).to(torch.int8) if signed_x else x.to(torch.uint8)
    w = torch.randint(-128, 128, w_shape, generator=g, dtype=torch.int8)
    per_channel = draw(st.booleans())
    w_scale = (torch.rand(o, generator=g, dtype=torch.float64) * 0.05 + 1e-4) if per_channel else 0.02
    out_scale = draw(st.floats(1e-4, 10.0))  # from saturating nearly everything to nearly nothing
    qmin, qmax = RANGES[out_dtype]
    out_zp = torch.tensor(draw(st.integers(qmin, qmax)), dtype=out_dtype)
    bias = torch.randn(o, generator=g) * draw(st.sampled_from([0.0, 1.0, 100.0]))
    x_zp = draw(st.integers(-128, 127) if signed_x else st.integers(0, 255))
    args = (x, draw(st.floats(1e-3, 0.5)), x_zp, w, w_scale, 0, bias if draw(st.booleans()) else None,
            out_scale, out_zp)
    return kind, backend, args, draw(st.booleans())


@settings(max_examples=80, deadline=None)
@given(layers())
def test_engine_outputs_stay_in_the_output_dtype_range_and_saturate_instead_of_wrapping(layer):
    kind, backend, args, relu = layer
    out_dtype = args[-1].dtype
    qmin, qmax = RANGES[out_dtype]
    zo = int(args[-1])
    result = getattr(qi, f"{kind}_detailed")(*args, relu=relu, backend=backend)
    out = result.out.to(torch.int32)
    assert result.out.dtype == out_dtype and result.out.shape == result.acc.shape
    assert int(out.min()) >= (max(zo, qmin) if relu else qmin) and int(out.max()) <= qmax
    if args[6] is None:  # without bias the output is requant(acc) + zo: check the clamp's side
        axis = 1 if kind == "conv2d" else -1
        m = result.requant.multiplier.double().reshape([-1] + [1] * (result.acc.dim() - 2 if axis == 1 else 0))
        ideal = result.acc.double() * m + zo  # what the codes would be without the clamp
        margin = 2 + 1e-6 * ideal.abs()
        assert bool((out[ideal > qmax + margin] == qmax).all())
        low = max(zo, qmin) if relu else qmin
        assert bool((out[ideal < low - margin] == low).all())


@pytest.mark.parametrize("backend", ["onnx", "q31"])
def test_conv2d_takes_int8_activations_on_onnx_and_q31(backend):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-128, 128, (2, 3, 5, 5), generator=g, dtype=torch.int8)
    w = torch.randint(-128, 128, (4, 3, 3, 3), generator=g, dtype=torch.int8)
    out = qi.conv2d(x, 0.05, -3, w, 0.02, 0, None, 0.5, torch.tensor(0, dtype=torch.int8), backend=backend)
    shifted = qi.conv2d((x.to(torch.int16) + 128).to(torch.uint8), 0.05, 125, w, 0.02, 0, None, 0.5,
                        torch.tensor(0, dtype=torch.int8), backend=backend)
    assert torch.equal(out, shifted)  # the same real values, coded with a zero point 128 higher
