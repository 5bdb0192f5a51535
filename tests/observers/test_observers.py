"""Observers against torch.ao.quantization's, bit for bit, and the clipping estimators'
promises (percentile within a bin of torch.quantile, entropy and mse beating minmax)."""

import warnings

import numpy as np
import pytest
import torch
import torch.ao.quantization.observer as tobs
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from qcal import QSpec
from qcal.observers.clipping import abs_histogram, kl_divergences
from qcal.observers.histogram import RunningHistogram
from qcal.observers.l2search import l2_range_search
from qcal.observers.observers import make_observer, make_observers, range_from_histogram
from qcal.qparams import dequantize, qparams_from_range, quantize

TORCH_DTYPE = {"quint8": torch.quint8, "qint8": torch.qint8}
TORCH_QSCHEME = {
    "per_tensor_affine": torch.per_tensor_affine,
    "per_tensor_symmetric": torch.per_tensor_symmetric,
    "per_channel_affine": torch.per_channel_affine,
    "per_channel_symmetric": torch.per_channel_symmetric,
}
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


pytestmark = pytest.mark.usefixtures("one_thread")


def torch_observer(spec: QSpec) -> torch.nn.Module:
    kw = {"dtype": TORCH_DTYPE[spec.dtype], "qscheme": TORCH_QSCHEME[spec.qscheme],
          "reduce_range": spec.reduce_range}
    if spec.observer == "histogram":
        return tobs.HistogramObserver(**kw)
    if spec.per_channel:
        cls = {"minmax": tobs.PerChannelMinMaxObserver,
               "moving_average": tobs.MovingAveragePerChannelMinMaxObserver}[spec.observer]
        return cls(ch_axis=spec.ch_axis, **kw)
    cls = {"minmax": tobs.MinMaxObserver, "moving_average": tobs.MovingAverageMinMaxObserver}
    return cls[spec.observer](**kw)


def both_qparams(spec: QSpec, batches: list[torch.Tensor]):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecations, qcal's all-zero warning
        ours, theirs = make_observer(spec), torch_observer(spec)
        for x in batches:
            ours.update(x)
            theirs(x)
        return ours.qparams(), theirs.calculate_qparams()


def assert_identical(ours, theirs):
    (s1, z1), (s2, z2) = ours, theirs
    assert s1.dtype == torch.float32 and z1.dtype == torch.int64
    assert torch.equal(s1.view(torch.int32), s2.float().view(torch.int32)), (s1, s2)
    assert torch.equal(z1, z2.long()), (z1, z2)


KINDS = ["normal", "relu", "offset", "constant", "zeros", "huge", "tiny", "integers", "single"]
SLOW_FOR_TORCH_HISTOGRAM = {"constant", "huge", "tiny", "single", "integers"}


def make_batch(kind: str, seed: int, shape: tuple[int, ...], scale: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "single":
        shape = (1,) * len(shape)
    x = torch.randn(shape, generator=g)
    return {
        "normal": x * scale,
        "relu": torch.relu(x) * scale,
        "offset": x * scale + 3 * scale,
        "constant": torch.full(shape, -scale),
        "zeros": torch.zeros(shape),
        "huge": x * 1e30,
        "tiny": x * 1e-30,
        "integers": torch.round(x * 3),
        "single": x * scale,
    }[kind]


def valid_spec(dtype, qscheme, observer, reduce_range, ch_axis=0):
    if qscheme.endswith("symmetric") and dtype == "quint8" and reduce_range:
        return None  # torch refuses it, so does qcal (tested below)
    return QSpec(dtype, qscheme, observer, reduce_range, ch_axis=ch_axis)


specs_per_tensor = st.builds(
    valid_spec, st.sampled_from(["quint8", "qint8"]),
    st.sampled_from(["per_tensor_affine", "per_tensor_symmetric"]),
    st.sampled_from(["minmax", "moving_average"]), st.booleans(),
).filter(lambda s: s is not None)


@st.composite
def batch_lists(draw, kinds=KINDS, max_batches=4):
    n = draw(st.integers(1, max_batches))
    dims = draw(st.lists(st.integers(1, 6), min_size=1, max_size=3))
    return [
        make_batch(draw(st.sampled_from(kinds)), draw(st.integers(0, 2**31)), tuple(dims),
                   draw(st.sampled_from([1e-3, 0.5, 1.0, 7.0, 1e4])))
        for _ in range(n)
    ]


@FAST
@given(spec=specs_per_tensor, batches=batch_lists())
def test_per_tensor_minmax_and_moving_average_match_torch(spec, batches):
    assert_identical(*both_qparams(spec, batches))


@st.composite
def channel_cases(draw):
    spec = draw(st.builds(
        valid_spec, st.sampled_from(["quint8", "qint8"]),
        st.sampled_from(["per_channel_affine", "per_channel_symmetric"]),
        st.sampled_from(["minmax", "moving_average"]), st.booleans(), st.sampled_from([0, 1, -1]),
    ).filter(lambda s: s is not None))
    shape = (draw(st.integers(1, 5)), draw(st.integers(1, 5)), draw(st.integers(1, 4)))
    batches = []
    for _ in range(draw(st.integers(1, 3))):
        x = make_batch(draw(st.sampled_from(KINDS[:-1])), draw(st.integers(0, 2**31)), shape,
                       draw(st.sampled_from([1e-3, 1.0, 1e4])))
        dead = torch.tensor(draw(st.lists(st.booleans(), min_size=shape[spec.ch_axis],
                                          max_size=shape[spec.ch_axis])))
        x = x.movedim(spec.ch_axis, 0).clone()
        x[dead] = 0.0  # all-zero channels
        batches.append(x.movedim(0, spec.ch_axis))
    return spec, batches


@FAST
@given(case=channel_cases())
def test_per_channel_minmax_and_moving_average_match_torch(case):
    assert_identical(*both_qparams(*case))


histogram_specs = st.builds(
    valid_spec, st.sampled_from(["quint8", "qint8"]),
    st.sampled_from(["per_tensor_affine", "per_tensor_symmetric"]), st.just("histogram"),
    st.booleans(),
).filter(lambda s: s is not None)
FAST_KINDS = [k for k in KINDS if k not in SLOW_FOR_TORCH_HISTOGRAM]


@st.composite
def histogram_batches(draw, kinds):
    batches = []
    for _ in range(draw(st.integers(1, 4))):
        n = draw(st.integers(1, 3000))
        batches.append(make_batch(draw(st.sampled_from(kinds)), draw(st.integers(0, 2**31)), (n,),
                                  draw(st.sampled_from([1e-3, 1.0, 1e4]))) * draw(st.floats(0.5, 3)))
    return batches


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=histogram_specs, batches=histogram_batches(FAST_KINDS))
def test_histogram_observer_matches_torch(spec, batches):
    assert_identical(*both_qparams(spec, batches))


@pytest.mark.parametrize("kind", sorted(SLOW_FOR_TORCH_HISTOGRAM | {"zeros"}))
def test_histogram_observer_matches_torch_on_degenerate_inputs(kind):
    # torch's own search takes ~1 s on these (it walks 1e5 quantile steps), hence few cases
    spec = QSpec("quint8", "per_tensor_affine", "histogram", reduce_range=True)
    batches = [make_batch(kind, 1, (40,), 2.0), make_batch(kind, 2, (40,), 3.0)]
    assert_identical(*both_qparams(spec, batches))


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=histogram_specs, batches=histogram_batches(KINDS))
def test_histogram_observer_matches_torch_sweep(spec, batches):
    assert_identical(*both_qparams(spec, batches))


@pytest.mark.slow
@SLOW
@given(spec=specs_per_tensor, batches=batch_lists(max_batches=6))
def test_per_tensor_observers_match_torch_sweep(spec, batches):
    assert_identical(*both_qparams(spec, batches))


@pytest.mark.slow
@SLOW
@given(case=channel_cases())
def test_per_channel_observers_match_torch_sweep(case):
    assert_identical(*both_qparams(*case))


def test_running_histogram_equals_torch_buffers_across_range_growth():
    theirs, ours = tobs.HistogramObserver(), RunningHistogram()
    for k in range(5):
        x = torch.randn(10_000) * (1 + k) + k  # each batch widens the range
        theirs(x)
        ours.update(x)
    assert torch.equal(theirs.histogram, ours.counts)
    assert theirs.min_val == ours.min_val and theirs.max_val == ours.max_val


def test_l2_search_equals_torch_on_a_full_size_activation():
    theirs, hist = tobs.HistogramObserver(reduce_range=True), RunningHistogram()
    for k in range(2):
        x = torch.relu(torch.randn(8, 16, 28, 28)) * (1 + 0.3 * k)
        theirs(x)
        hist.update(x)
    lo, hi = l2_range_search(hist.counts, hist.min_val, hist.max_val)
    t_lo, t_hi = theirs._non_linear_param_search()
    assert lo.item() == t_lo.item() and hi.item() == t_hi.item()


def test_unobserved_observer_returns_scale_one_zero_point_zero():
    for obs in ["minmax", "moving_average", "histogram", "percentile", "entropy", "mse"]:
        s, z = make_observer(QSpec("quint8", "per_tensor_affine", obs)).qparams()
        assert s.tolist() == [1.0] and z.tolist() == [0]
    s, z = make_observer(QSpec("qint8", "per_channel_symmetric", "minmax")).qparams()
    assert s.tolist() == [1.0] and z.tolist() == [0]


@pytest.mark.parametrize("obs", ["minmax", "histogram", "percentile", "entropy", "mse"])
def test_nan_and_inf_inputs_raise_with_counts(obs):
    o = make_observer(QSpec("quint8", "per_tensor_affine", obs))
    with pytest.raises(ValueError, match="2 NaN and 1 Inf"):
        o.update(torch.tensor([1.0, float("nan"), float("nan"), float("-inf")]))


def test_all_zero_input_warns_once_that_scale_is_eps():
    o = make_observer(QSpec("qint8", "per_channel_symmetric", "minmax"))
    o.update(torch.zeros(3, 4))
    with pytest.warns(UserWarning, match="only zeros in 3 of 3"):
        s, _ = o.qparams()
    assert torch.all(s == torch.finfo(torch.float32).eps)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        o.qparams()  # once per observer


def test_symmetric_quint8_with_reduce_range_is_refused_like_torch():
    with pytest.raises(ValueError, match="reduce_range"):
        make_observer(QSpec("quint8", "per_tensor_symmetric", "minmax", reduce_range=True))
    with pytest.raises(NotImplementedError):
        tobs.MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_symmetric,
                            reduce_range=True)


def test_unknown_option_is_rejected_naming_the_accepted_ones():
    with pytest.raises(ValueError, match="accepted: \\['bins', 'eps', 'percentile'\\]"):
        make_observer(QSpec(observer="percentile", options={"pct": 99.0}))


def test_channel_count_change_is_rejected():
    o = make_observer(QSpec("qint8", "per_channel_affine", "minmax"))
    o.update(torch.randn(3, 4))
    with pytest.raises(ValueError, match="3 channels before, now 5"):
        o.update(torch.randn(5, 4))


def test_histogram_view_and_clip_range_shapes():
    o = make_observer(QSpec("quint8", "per_tensor_affine", "histogram"))
    o.update(torch.randn(1000))
    edges, counts = o.histogram()
    assert edges.shape == (2049,) and counts.shape == (2048,) and counts.sum() == 1000
    lo, hi = o.clip_range()
    assert lo.shape == hi.shape == (1,) and edges[0] <= lo <= hi <= edges[-1]
    assert make_observer(QSpec("qint8", "per_channel_affine", "percentile")).histogram() is None


# ---- percentile ----------------------------------------------------------------------------

DATA = {
    "normal": lambda n, g: torch.randn(n, generator=g),
    "student_t2": lambda n, g: torch.randn(n, generator=g) / torch.sqrt(
        torch.distributions.Chi2(2.0).sample((n,)) / 2),
    "relu": lambda n, g: torch.relu(torch.randn(n, generator=g)),
    "uniform": lambda n, g: torch.rand(n, generator=g),
}


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(sorted(DATA)), n=st.integers(2, 60_000), seed=st.integers(0, 2**31),
       p=st.sampled_from([99.99, 99.9, 99.0, 90.0, 100.0]), symmetric=st.booleans())
@example(kind="student_t2", n=2, seed=322883, p=99.99, symmetric=False)  # two values a few float32 steps apart
def test_percentile_is_within_one_bin_of_the_exact_quantile(kind, n, seed, p, symmetric):
    torch.manual_seed(seed)
    x = DATA[kind](n, torch.Generator().manual_seed(seed))
    qs = "per_tensor_symmetric" if symmetric else "per_tensor_affine"
    o = make_observer(QSpec("qint8", qs, "percentile", options={"percentile": p}))
    o.update(x)
    edges, _ = o.histogram()
    bin_width = (edges[1] - edges[0]).item()
    lo, hi = o.clip_range()
    q = torch.tensor([1 - p / 100, p / 100], dtype=torch.float64)
    if symmetric:
        t = torch.quantile(x.abs().double(), q[1]).item()
        exact = (-t, t)
    else:
        exact = torch.quantile(x.double(), q).tolist()
    # the clip range is float32: within a bin, plus the float32 rounding of the quantile itself
    # (a range a few float32 steps wide has bins narrower than one step: width 0 in float32)
    step = torch.finfo(torch.float32).eps * max(abs(e) for e in exact)
    assert abs(lo.item() - exact[0]) <= bin_width * 1.0001 + step
    assert abs(hi.item() - exact[1]) <= bin_width * 1.0001 + step


def test_percentile_after_the_range_grew_is_within_two_bins():
    # torch's rebinning (shared by RunningHistogram) moves each value by up to a bin when
    # the range grows, so the one-bin promise loosens to two.
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(20_000, generator=g) * (1 + 0.5 * k) for k in range(4)]
    x = torch.cat(batches)
    for symmetric in (False, True):
        qs = "per_tensor_symmetric" if symmetric else "per_tensor_affine"
        o = make_observer(QSpec("qint8", qs, "percentile", options={"percentile": 99.9}))
        for b in batches:
            o.update(b)
        edges, _ = o.histogram()
        exact = torch.quantile((x.abs() if symmetric else x).double(), 0.999).item()
        assert abs(o.clip_range()[1].item() - exact) <= 2 * (edges[1] - edges[0]).item()


def test_per_channel_percentile_is_exact():
    w = torch.randn(8, 500)
    o = make_observer(QSpec("qint8", "per_channel_affine", "percentile", options={"percentile": 99.0}))
    o.update(w)
    lo, hi = o.clip_range()
    exact = torch.quantile(w.double(), torch.tensor([0.01, 0.99], dtype=torch.float64), dim=1)
    assert torch.allclose(lo.double(), exact[0], rtol=1e-6) and torch.allclose(hi.double(), exact[1], rtol=1e-6)


# ---- entropy and mse -----------------------------------------------------------------------

def heavy_outliers(n=200_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g)
    x[:20] = 40 * torch.sign(x[:20])  # a few huge outliers stretch the minmax range
    return x


@pytest.mark.parametrize("qscheme", ["per_tensor_symmetric", "per_tensor_affine"])
def test_entropy_clips_outliers_and_lowers_kl_below_the_minmax_threshold(qscheme):
    x = heavy_outliers()
    o = make_observer(QSpec("qint8", qscheme, "entropy"))
    o.update(x)
    lo, hi = o.clip_range()
    assert hi.item() < 0.5 * x.max().item() and lo.item() > 0.5 * x.min().item()
    abs_edges, abs_counts = abs_histogram(*o.histogram())
    cuts, kl = kl_divergences(abs_counts, 128)
    chosen = int(np.argmin(np.abs(abs_edges[cuts] - hi.item())))
    assert kl[chosen] < kl[-1]  # kl[-1]: the cut at max|x|, i.e. the minmax threshold


def test_entropy_on_relu_data_uses_the_one_sided_histogram():
    x = torch.relu(heavy_outliers())
    o = make_observer(QSpec("quint8", "per_tensor_affine", "entropy"))
    o.update(x)
    lo, hi = o.clip_range()
    assert lo.item() == 0.0 and 1.0 < hi.item() < 20.0


def quant_mse(x, spec, lo, hi):
    axis = 0 if spec.per_channel else None
    s, z = qparams_from_range(lo, hi, dtype=spec.dtype, symmetric=spec.symmetric,
                              reduce_range=spec.reduce_range)
    if axis is None:
        s, z = s.item(), int(z.item())
    deq = dequantize(quantize(x, s, z, spec.dtype, axis=axis), s, z, axis=axis)
    return ((deq.double() - x.double()) ** 2).mean().item()


def minmax_range(x, spec):
    o = make_observer(QSpec(spec.dtype, spec.qscheme, "minmax", spec.reduce_range))
    o.update(x)
    return o.clip_range()


@pytest.mark.parametrize("dist", ["laplace", "student_t3"])
@pytest.mark.parametrize("qscheme", ["per_tensor_affine", "per_tensor_symmetric"])
def test_mse_beats_minmax_on_heavy_tailed_data(dist, qscheme):
    torch.manual_seed(0)
    x = (torch.distributions.Laplace(0.0, 1.0).sample((100_000,)) if dist == "laplace"
         else torch.distributions.StudentT(3.0).sample((100_000,)))
    spec = QSpec("qint8", qscheme, "mse")
    o = make_observer(spec)
    o.update(x)
    # the estimator's optimum (checked by brute force over clips) is 15-35% below minmax here
    assert quant_mse(x, spec, *o.clip_range()) < 0.9 * quant_mse(x, spec, *minmax_range(x, spec))


@pytest.mark.parametrize("spec", [QSpec("quint8", "per_tensor_affine", "mse", reduce_range=True),
                                  QSpec("qint8", "per_tensor_symmetric", "mse"),
                                  QSpec("qint8", "per_channel_affine", "mse"),
                                  QSpec("qint8", "per_channel_symmetric", "mse")])
def test_mse_is_never_much_worse_than_minmax_on_uniform_data(spec):
    x = torch.rand(16, 4000) * 2 - 0.5
    o = make_observer(spec)
    o.update(x)
    assert quant_mse(x, spec, *o.clip_range()) <= 1.02 * quant_mse(x, spec, *minmax_range(x, spec))


@pytest.mark.parametrize("qscheme", ["per_channel_symmetric", "per_channel_affine"])
def test_per_channel_mse_beats_minmax_on_laplace_weights(qscheme):
    # Clipping pays off only where the tail is dense: a lone outlier is cheaper kept.
    torch.manual_seed(0)
    w = torch.distributions.Laplace(0.0, 0.05).sample((16, 20_000))
    spec = QSpec("qint8", qscheme, "mse")
    o = make_observer(spec)
    o.update(w)
    assert quant_mse(w, spec, *o.clip_range()) < 0.97 * quant_mse(w, spec, *minmax_range(w, spec))


def test_one_shared_histogram_serves_several_estimators():
    hist = RunningHistogram()
    x = heavy_outliers(50_000)
    hist.update(x)
    for name in ["histogram", "percentile", "entropy", "mse"]:
        spec = QSpec("qint8", "per_tensor_symmetric", name)
        o = make_observer(spec)
        o.update(x)
        shared = range_from_histogram(spec, hist)
        assert torch.equal(shared[0], o.clip_range()[0]) and torch.equal(shared[1], o.clip_range()[1])


def test_make_observers_share_one_histogram_pass_and_match_separate_observers():
    specs = [QSpec("quint8", "per_tensor_affine", "histogram", reduce_range=True),
             QSpec("quint8", "per_tensor_affine", "histogram"),
             QSpec("qint8", "per_tensor_symmetric", "percentile"),
             QSpec("quint8", "per_tensor_affine", "entropy"),
             QSpec("qint8", "per_tensor_symmetric", "mse"),
             QSpec("quint8", "per_tensor_affine", "minmax")]
    group = make_observers(specs)
    alone = {spec: make_observer(spec) for spec in specs}
    g = torch.Generator().manual_seed(0)
    for k in range(3):
        x = torch.randn(5000, generator=g) * (1 + k)
        for o in [*group.values(), *alone.values()]:
            o.update(x)
    hists = {id(o.hist) for o in group.values() if hasattr(o, "hist")}
    assert len(hists) == 1 and next(o.hist for o in group.values()
                                    if hasattr(o, "hist")).updates == 3
    for spec in specs:
        assert_identical(group[spec].qparams(), alone[spec].qparams())


@pytest.mark.parametrize("observer", ["percentile", "entropy", "mse"])
@pytest.mark.parametrize("qscheme", sorted(TORCH_QSCHEME))
def test_clipping_estimators_give_ordered_ranges_and_finite_scales_on_degenerate_inputs(
        observer, qscheme):
    # constant, all-zero, single-element, huge, tiny, integer and offset (away from 0) data
    for kind in KINDS:
        for shape in [(4, 50), (1, 1), (3, 1)]:
            o = make_observer(QSpec("qint8", qscheme, observer))
            for seed in range(2):
                o.update(make_batch(kind, seed, shape, 2.0))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # all-zero: scale = eps
                scale, _ = o.qparams()
            lo, hi = o.clip_range()
            assert torch.all(lo <= hi), (kind, shape, lo, hi)
            assert torch.all(torch.isfinite(scale) & (scale > 0)), (kind, shape, scale)
