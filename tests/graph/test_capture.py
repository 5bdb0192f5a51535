"""Captured programs (qcal/graph/capture.py): the prepared calls give the step-by-step codes."""

import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from wholemodel_cases import ARCHITECTURES, digits_data, make_model

from qcal import calibrate
from qcal.graph import capture
from qcal.int8 import native
from qcal.int8.cpu.isa import assumed_cpu, emulating

needs_native = pytest.mark.skipif(not native.available(), reason=f"no native kernel here: {native.why_unavailable()}")


def _step_by_step(qm, x, monkeypatch):
    with monkeypatch.context() as m:
        m.setenv(capture.ENV_VAR, "0")
        return qm(x)


def _inputs():
    _, test = digits_data()
    # the test images, and far outside the calibrated range (clamps; FBGEMM's pairs saturate)
    return [test[:1], test[:5], test[5:13] * 6.0 - 4.0]


@pytest.fixture(scope="module")
def calib():
    return digits_data()[0]


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
@pytest.mark.parametrize("scheme, backend", [
    ("fbgemm_default", "fbgemm"), ("per_tensor_affine", "fbgemm"), ("per_channel_affine", "fbgemm"),
    ("qnnpack_default", "qnnpack"), ("per_tensor_symmetric", "qnnpack"), ("fbgemm_default", "x86"),
    ("per_tensor_affine", "ort"), ("per_channel_symmetric", "onnx"), ("xnnpack_default", "xnnpack"),
])
def test_a_captured_run_gives_the_step_by_step_codes(arch, scheme, backend, calib, monkeypatch):
    qm = calibrate(make_model(arch), calib, scheme, backend, mode="graph")
    for x in _inputs():
        expected = _step_by_step(qm, x, monkeypatch)
        first, again = qm(x), qm(x)  # the run that records, then the capture's own run
        assert torch.equal(first, expected) and torch.equal(again, expected)
    assert len(qm.runtime()._captures) == len(_inputs())


@needs_native
@pytest.mark.parametrize("backend, cpu", [("fbgemm", "avx2"), ("fbgemm", None), ("qnnpack", None)])
def test_the_layers_and_the_input_quantize_run_prepared_native_calls(backend, cpu, calib):
    qm = calibrate(make_model("cnn"), calib, "per_tensor_affine", backend, mode="graph")
    with emulating(assumed_cpu(cpu)):
        qm(calib[0][:1])  # one image: small enough that no CPU hands its convs to oneDNN's AMX
    (run,) = qm.runtime()._captures.values()
    kinds = {s.kind for s in qm.graph.steps if s.name in run.prepared}
    expected = {"linear", "quantize", "dequantize", "max_pool2d"}
    # the 3x3 convs: FBGEMM's saturating kernel where it saturates; elsewhere the exact kernel,
    # which an AVX2 build (no VNNI) leaves to the float engine on im2col layers (faster there)
    saturates = backend == "fbgemm" and assumed_cpu(cpu).gemm_isa in ("avx2", "avx512")
    assert kinds >= expected | ({"conv"} if saturates or native.native_vnni() else set())


@needs_native
def test_adds_and_global_pools_run_prepared_calls(calib):
    qm = calibrate(make_model("resnet"), calib, "fbgemm_default", "fbgemm", mode="graph")
    qm(calib[0])
    (run,) = qm.runtime()._captures.values()
    assert {"add", "adaptive_avg_pool2d"} <= {s.kind for s in qm.graph.steps if s.name in run.prepared}


def test_each_emulated_cpu_gets_its_own_capture(calib, monkeypatch):
    qm = calibrate(make_model("resnet"), calib, "fbgemm_default", "fbgemm", mode="graph")
    x = _inputs()[2]
    for _ in range(2):
        for cpu in (assumed_cpu("avx2"), assumed_cpu("avx512_vnni"), None):
            if cpu is None:
                assert torch.equal(qm(x), _step_by_step(qm, x, monkeypatch))
                continue
            with emulating(cpu):
                assert torch.equal(qm(x), _step_by_step(qm, x, monkeypatch))
    assert len(qm.runtime()._captures) == 2 + (assumed_cpu() not in (assumed_cpu("avx2"), assumed_cpu("avx512_vnni")))


def test_beyond_its_limit_a_program_forgets_its_oldest_capture(calib, monkeypatch):
    qm = calibrate(make_model("mobilenet"), calib, "per_tensor_affine", "fbgemm", mode="graph")
    test = digits_data()[1]
    for n in range(1, capture.MAX_CAPTURES + 3):
        assert torch.equal(qm(test[:n]), _step_by_step(qm, test[:n], monkeypatch))
    assert len(qm.runtime()._captures) == capture.MAX_CAPTURES


def test_a_pickled_model_prepares_its_calls_again(calib):
    # (a Dask worker gets models pickled; prepared calls hold C pointers, and stay behind)
    qm = calibrate(make_model("cnn"), calib, "fbgemm_default", "fbgemm", mode="graph")
    x = digits_data()[1][:3]
    expected = qm(x)
    again = pickle.loads(pickle.dumps(qm))
    assert torch.equal(again(x), expected) and len(again.runtime()._captures) == 1


def test_a_prepared_call_runs_the_programs_own_step_for_a_value_it_was_not_prepared_for():
    example = torch.zeros(2, 3, 4, 5, dtype=torch.uint8)
    calls = []
    run = capture._guarded(("x",), (example,), lambda v: calls.append("prepared") or v,
                           lambda env: calls.append("own") or env["x"])
    run({"x": example.clone()})
    run({"x": example.contiguous(memory_format=torch.channels_last)})  # other strides
    run({"x": example.to(torch.int8)})
    run({"x": torch.zeros(1, 3, 4, 5, dtype=torch.uint8)})
    assert calls == ["prepared", "own", "own", "own"]
    failing = capture._guarded(("x",), (example,), lambda v: None, lambda env: "own")  # the native pass failed
    assert failing({"x": example}) == "own"
    pair = capture._guarded(("a", "b"), (example, example), lambda a, b: "prepared", lambda env: "own")
    assert pair({"a": example, "b": example}) == "prepared" and pair({"a": example, "b": example[:1]}) == "own"


def _model(c1, c2, k, stride, pad, depthwise, clamp):
    layers = [nn.Conv2d(1, c1, k, stride, pad), nn.BatchNorm2d(c1), nn.ReLU6() if clamp else nn.ReLU()]
    if depthwise:
        layers += [nn.Conv2d(c1, c1, 3, 1, 1, groups=c1), nn.ReLU()]
    layers += [nn.Conv2d(c1, c2, 1), nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(), nn.LazyLinear(7)]
    model = nn.Sequential(*layers)
    model(torch.zeros(1, 1, 8, 8))
    return model.eval()


@pytest.mark.filterwarnings("ignore:.*observer saw only zeros")  # a random ReLU model's dead channels
@settings(max_examples=25, deadline=None)
@given(c1=st.integers(1, 40), c2=st.integers(1, 36), k=st.integers(1, 3), stride=st.integers(1, 2),
       pad=st.integers(0, 1), depthwise=st.booleans(), clamp=st.booleans(),
       scheme=st.sampled_from(["fbgemm_default", "per_tensor_affine", "per_channel_affine", "qnnpack_default"]),
       backend=st.sampled_from(["fbgemm", "qnnpack", "ort"]), cpu=st.sampled_from([None, "avx2"]),
       gain=st.floats(0.5, 8.0), seed=st.integers(0, 2**16))
def test_captured_random_convnets_give_the_step_by_step_codes(c1, c2, k, stride, pad, depthwise, clamp, scheme,
                                                              backend, cpu, gain, seed):
    torch.manual_seed(seed)
    model = _model(c1, c2, k, stride, pad, depthwise, clamp)
    qm = calibrate(model, [torch.rand(6, 1, 8, 8)], scheme, backend, mode="graph")
    x = torch.randn(3, 1, 8, 8) * gain
    with emulating(assumed_cpu(cpu)):
        with pytest.MonkeyPatch.context() as m:
            m.setenv(capture.ENV_VAR, "0")
            expected = qm(x)
        assert torch.equal(qm(x), expected) and torch.equal(qm(x), expected)
