"""quant_min / quant_max: every observer against torch's constructed with the same range, bit
for bit (XNNPACK's symmetric int8 weights in -127..127, 4-bit weights in -8..7 stored in
qint8, and ranges drawn by hypothesis), and the clipping estimators working on the codes the
range leaves them."""

import warnings

import pytest
import torch
import torch.ao.quantization.observer as tobs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcal import QSpec
from qcal.observers.observers import make_observer

TORCH_DTYPE = {"quint8": torch.quint8, "qint8": torch.qint8}
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
XNNPACK = (-127, 127)
INT4 = (-8, 7)

pytestmark = pytest.mark.usefixtures("one_thread")


def torch_observer(spec: QSpec) -> torch.nn.Module:
    kw = {"dtype": TORCH_DTYPE[spec.dtype], "qscheme": getattr(torch, spec.qscheme),
          "reduce_range": spec.reduce_range, "quant_min": spec.quant_min, "quant_max": spec.quant_max}
    if spec.observer == "histogram":
        return tobs.HistogramObserver(**kw)
    if spec.per_channel:
        cls = {"minmax": tobs.PerChannelMinMaxObserver,
               "moving_average": tobs.MovingAveragePerChannelMinMaxObserver}[spec.observer]
        return cls(ch_axis=spec.ch_axis, **kw)
    return {"minmax": tobs.MinMaxObserver, "moving_average": tobs.MovingAverageMinMaxObserver}[spec.observer](**kw)


def assert_same_as_torch(spec: QSpec, batches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's reduce_range deprecation, qcal's all-zero warning
        ours, theirs = make_observer(spec), torch_observer(spec)
        for x in batches:
            ours.update(x)
            theirs(x)
        (s1, z1), (s2, z2) = ours.qparams(), theirs.calculate_qparams()
    assert (theirs.quant_min, theirs.quant_max) == spec.code_range()
    assert torch.equal(s1.view(torch.int32), s2.float().view(torch.int32)), (s1, s2)
    assert torch.equal(z1, z2.long()), (z1, z2)
    return s1, z1


@st.composite
def ranges(draw, dtype):
    """(quant_min, quant_max, reduce_range) torch and qcal both accept for ``dtype``."""
    if dtype == "quint8":
        lo, hi = 0, draw(st.integers(1, 255))
    else:
        lo, hi = draw(st.sampled_from([XNNPACK, INT4, None])) or (draw(st.integers(-128, 0)), 0)
        if hi == 0:
            hi = draw(st.integers(0 if lo < 0 else 1, 127))
    reduce_range = draw(st.booleans()) and lo // 2 < hi // 2
    return lo, hi, reduce_range


@st.composite
def specs(draw, qschemes, observers):
    dtype = draw(st.sampled_from(["quint8", "qint8"]))
    qscheme = draw(st.sampled_from(qschemes))
    lo, hi, reduce_range = draw(ranges(dtype))
    if qscheme.endswith("symmetric") and dtype == "quint8":
        reduce_range = False  # refused by torch and qcal
    return QSpec(dtype, qscheme, draw(st.sampled_from(observers)), reduce_range,
                 ch_axis=draw(st.sampled_from([0, 1, -1])) if qscheme.startswith("per_channel") else 0,
                 quant_min=lo, quant_max=hi)


@st.composite
def batches(draw, shape=None, n_max=3):
    shape = shape or tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)))
    out = []
    for _ in range(draw(st.integers(1, n_max))):
        g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
        x = torch.randn(shape, generator=g) * draw(st.sampled_from([1e-3, 0.5, 7.0, 1e4]))
        out.append(x + draw(st.sampled_from([0.0, 3.0])) * x.abs().max() if x.numel() > 1 else x)
    return out


@FAST
@given(spec=specs(["per_tensor_affine", "per_tensor_symmetric"], ["minmax", "moving_average"]), data=batches())
def test_per_tensor_observers_with_a_range_match_torch(spec, data):
    assert_same_as_torch(spec, data)


@FAST
@given(spec=specs(["per_channel_affine", "per_channel_symmetric"], ["minmax", "moving_average"]),
       data=batches((4, 3, 2)))
def test_per_channel_observers_with_a_range_match_torch(spec, data):
    assert_same_as_torch(spec, data)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs(["per_tensor_affine", "per_tensor_symmetric"], ["histogram"]), data=batches((500,)))
def test_histogram_observer_with_a_range_matches_torch(spec, data):
    assert_same_as_torch(spec, data)


@pytest.mark.parametrize("qscheme", ["per_channel_symmetric", "per_tensor_symmetric"])
def test_xnnpack_symmetric_int8_weights(qscheme):
    """-127..127: scale max|w| / 127 (not 127.5), zero point 0; a zero channel gets eps."""
    w = torch.randn(6, 4, 3, 3)
    w[2] = 0.0
    spec = QSpec("qint8", qscheme, "minmax", quant_min=-127, quant_max=127)
    scale, zp = assert_same_as_torch(spec, [w])
    absmax = w.abs().amax(dim=(1, 2, 3)) if spec.per_channel else w.abs().max().reshape(1)
    assert torch.equal(scale, torch.max(absmax / 127.0, torch.tensor(torch.finfo(torch.float32).eps)))
    assert not bool(zp.any())


@pytest.mark.parametrize("qscheme", ["per_channel_affine", "per_channel_symmetric", "per_tensor_affine"])
def test_int4_weights_in_qint8(qscheme):
    w = torch.randn(5, 7) + 0.3
    scale, zp = assert_same_as_torch(QSpec("qint8", qscheme, "minmax", quant_min=-8, quant_max=7), [w])
    full = make_observer(QSpec("qint8", qscheme, "minmax"))
    full.update(w)
    assert bool((scale > 10 * full.qparams()[0]).all())  # 15 steps instead of 255
    assert bool(((zp >= -8) & (zp <= 7)).all())


def test_symmetric_quint8_with_a_range_centres_the_zero_point_like_torch():
    spec = QSpec("quint8", "per_tensor_symmetric", "minmax", quant_min=0, quant_max=15)
    _, zp = assert_same_as_torch(spec, [torch.randn(50)])
    assert zp.tolist() == [7]  # torch's (quant_min + quant_max) // 2, not 128


def test_reduce_range_halves_a_given_range_as_torch_does():
    spec = QSpec("qint8", "per_tensor_affine", "minmax", reduce_range=True, quant_min=-127, quant_max=127)
    assert spec.code_range() == (-64, 63)
    assert_same_as_torch(spec, [torch.randn(40) * 3])


def _fit(observer: str, qscheme: str, x: torch.Tensor, qrange: tuple[int, int] | None):
    lo, hi = qrange or (None, None)
    spec = QSpec("qint8", qscheme, observer, quant_min=lo, quant_max=hi)
    o = make_observer(spec)
    o.update(x)
    scale, _ = o.qparams()
    return o.clip_range()[1], scale


@pytest.mark.parametrize("observer", ["mse", "entropy"])
@pytest.mark.parametrize("qscheme", ["per_tensor_symmetric", "per_channel_symmetric"])
def test_clipping_estimators_clip_harder_with_fewer_codes(observer, qscheme):
    """Gaussian data: the error-minimising range for 16 levels lies inside the one for 256
    (each estimator must see the range it quantizes to; ignoring it gives equal ranges)."""
    x = torch.randn(4, 20000, generator=torch.Generator().manual_seed(0))
    hi8, scale8 = _fit(observer, qscheme, x, None)
    hi4, scale4 = _fit(observer, qscheme, x, INT4)
    assert bool((hi4 < hi8).all()), (hi4, hi8)
    assert bool((scale4 > 8 * scale8).all())


@pytest.mark.parametrize("qscheme", ["per_tensor_symmetric", "per_channel_symmetric"])
def test_percentile_range_is_spread_over_the_given_codes(qscheme):
    x = torch.randn(3, 5000, generator=torch.Generator().manual_seed(1))
    hi, scale = _fit("percentile", qscheme, x, XNNPACK)
    assert torch.equal(scale, hi / 127.0)
