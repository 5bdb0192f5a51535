"""qcal.equalize: the function is kept, ranges are balanced, the pairs and refusals are right."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from repair_cases import ConvPair, accuracy, trained_relu_mobilenet
from torch import nn

import qcal
from qcal import datasets, zoo
from qcal.analysis.reference import quantized_engine, torch_reference
from qcal.repair.equalize import equalize, log_spread
from qcal.zoo.architectures import DigitsMLP, TinyEncoder

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads cost more than they give


def _randomize(model: nn.Module, seed: int, spread: float) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                c = mod.num_features
                mod.weight.copy_(torch.exp(torch.randn(c, generator=gen) * spread))  # channel ranges far apart
                mod.bias.copy_(torch.randn(c, generator=gen))
                mod.running_mean.copy_(torch.randn(c, generator=gen))
                mod.running_var.copy_(torch.rand(c, generator=gen) + 0.1)
    return model.eval().requires_grad_(False)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), mid=st.sampled_from([4, 6, 8]), depthwise=st.booleans(),
       act=st.sampled_from(["relu", "identity"]), pool=st.booleans(), spread=st.floats(0.0, 3.0))
def test_equalization_keeps_the_function_of_random_pairs(seed, mid, depthwise, act, pool, spread):
    torch.manual_seed(seed)
    model = _randomize(ConvPair(3, mid, mid if depthwise else 5, mid if depthwise else 1,
                                nn.ReLU() if act == "relu" else nn.Identity(), pool), seed, spread)
    x = torch.randn(4, 3, 6, 6)
    eq = equalize(model, x)
    assert [(p.first, p.second) for p in eq.pairs] == [("a", "b")]
    y0, y1 = model(x), eq.model(x)
    assert torch.allclose(y1, y0, rtol=1e-4, atol=1e-4 * float(y0.abs().max()))
    assert eq.max_output_change == pytest.approx(float((y1 - y0).abs().max()), abs=1e-6)
    # after convergence, A's output channel i and B's input channel i have the same range
    a, b = eq.model.a.weight.abs(), eq.model.b.weight.abs()
    r1 = a.reshape(mid, -1).amax(1)
    r2 = b.amax(dim=(1, 2, 3)) if depthwise else b.amax(dim=(0, 2, 3))
    assert torch.allclose(r1, r2, rtol=1e-3)


def test_relu6_kept_ends_the_pair_and_changes_nothing_but_the_folding():
    model = _randomize(ConvPair(3, 6, 5, 1, nn.ReLU6(), False), 1, 2.0)
    x = torch.randn(4, 3, 6, 6)
    eq = equalize(model, x)
    assert eq.pairs == [] and "ReLU6" in eq.skipped["a"]
    assert eq.max_output_change < 1e-5
    bounded = equalize(model, x, relu6="bounded")
    assert len(bounded.pairs) == 1
    assert bounded.max_output_change < 1e-4 * eq.output_magnitude  # exact on the inputs it saw
    replaced = equalize(model, x, relu6="replace")
    assert replaced.replaced_relu6 and replaced.replacement_change > 0  # ReLU6 clipped somewhere here
    assert not any(isinstance(m, nn.ReLU6) for m in replaced.model.modules())


def test_bounded_needs_inputs_and_bad_arguments_are_named():
    model = ConvPair(3, 6, 5, 1, nn.ReLU6(), False).eval()
    with pytest.raises(ValueError, match="inputs="):
        equalize(model, relu6="bounded")
    with pytest.raises(ValueError, match="relu6 mode"):
        equalize(model, relu6="clip")
    with pytest.raises(TypeError):
        equalize("model")


def test_a_module_swap_model_comes_back_unchanged_with_the_reason():
    model = TinyEncoder().eval()
    with pytest.warns(UserWarning, match="correct_bias"):
        eq = equalize(model)
    assert not eq.applied and eq.model is model and "trace" in eq.notes[0]
    assert "nothing applied" in eq.summary()


def test_linear_pairs_and_the_callers_model_untouched():
    torch.manual_seed(3)
    model = DigitsMLP().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(16, 1, 8, 8)
    eq = equalize(model, x)
    assert [(p.first, p.second) for p in eq.pairs] == [("fc1", "fc2"), ("fc2", "fc3")]
    assert "fc3" in eq.skipped
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert eq.max_output_change < 1e-4


def test_bias_absorption_from_bn_statistics_moves_bias_into_the_next_layer():
    model = _randomize(ConvPair(3, 6, 5, 1, nn.ReLU(), False), 2, 0.5)
    with torch.no_grad():
        model.bn.bias.fill_(4.0)  # beta - 3|gamma| > 0 for every channel with a small gamma
        model.bn.weight.fill_(0.5)
    eq = equalize(model)  # no inputs: BN's own statistics
    assert eq.absorbed and "BN statistics" in eq.notes[0]
    x = torch.randn(8, 3, 6, 6) * 0.1  # small inputs stay above the floor: exact there
    assert torch.allclose(eq.model(x), model(x), atol=1e-4)


@pytest.fixture(scope="module")
def dead_channel_model():
    return trained_relu_mobilenet()


def test_the_dead_channel_model_recovers_per_tensoraccuracy(dead_channel_model):
    digits = datasets.digits_splits()
    x, y = digits.test
    calib = datasets.calib_batches(digits.calib[0])
    eq = qcal.equalize(dead_channel_model, calib)
    fp32 = accuracy(dead_channel_model, x, y)
    assert float((eq.model(x) - dead_channel_model(x)).abs().max()) < 1e-3
    before = qcal.calibrate(dead_channel_model, calib, "per_tensor_symmetric")
    after = qcal.calibrate(eq.model, calib, "per_tensor_symmetric")
    assert accuracy(before, x, y) < fp32 - 0.05  # per-tensor fails on the outlier channel
    assert accuracy(after, x, y) >= fp32 - 0.01
    assert log_spread(eq.weight_ranges, "blocks.0.depthwise.0") < log_spread(
        eq.weight_ranges, "blocks.0.depthwise.0", "before") - 1  # 10x narrower spread at least


def test_an_equalized_model_exports_to_torch_with_identical_outputs(digits):
    d, calib = digits
    eq = qcal.equalize(zoo.load("digits_mobilenet"), calib, relu6="bounded")
    x = d.test[0][:64]
    for scheme in ("per_tensor_symmetric", "fbgemm_default"):
        qm = qcal.calibrate(eq.model, calib, scheme)
        ref = torch_reference(eq.model, calib, scheme, "fbgemm")
        with quantized_engine("fbgemm"), torch.no_grad():
            assert torch.equal(ref(x), qm(x))  # convert_fx of the equalized float model: the same values
