"""torch_reference: torch's own FX conversion under a qcal scheme, the tests' oracle."""

import pytest
import torch
from torch.ao.quantization import observer as tobs
from wholemodel_cases import digits_data, make_model

import qcal
from qcal.analysis.reference import quantized_engine, torch_observer, torch_qconfig, torch_reference
from qcal.schemes import QSpec, Scheme


def test_presets_map_to_torchs_observers_with_the_same_dtype_qscheme_and_range():
    fb = torch_qconfig("fbgemm_default")
    act, weight = fb.activation(), fb.weight()
    assert isinstance(act, tobs.HistogramObserver) and act.reduce_range and act.dtype == torch.quint8
    assert isinstance(weight, tobs.PerChannelMinMaxObserver)
    assert weight.qscheme == torch.per_channel_symmetric and weight.dtype == torch.qint8
    qn = torch_qconfig("qnnpack_default")
    assert not qn.activation().reduce_range
    assert qn.weight().qscheme == torch.per_tensor_symmetric
    pta = torch_qconfig("per_tensor_affine")
    assert type(pta.activation()) is tobs.MinMaxObserver and pta.activation().reduce_range
    assert type(pta.weight()) is tobs.MinMaxObserver and pta.weight().qscheme == torch.per_tensor_affine


def test_moving_average_maps_to_torchs_moving_average_observers():
    obs = torch_observer(QSpec("qint8", "per_channel_affine", "moving_average", ch_axis=0))()
    assert isinstance(obs, tobs.MovingAveragePerChannelMinMaxObserver) and obs.averaging_constant == 0.01


@pytest.mark.parametrize("observer", ["percentile", "entropy", "mse"])
def test_observers_torch_lacks_are_rejected(observer):
    scheme = Scheme("x", QSpec("qint8", "per_tensor_symmetric"), QSpec(observer=observer))
    with pytest.raises(ValueError, match="torch has no"):
        torch_reference(make_model("cnn"), torch.rand(4, 1, 8, 8), scheme, "fbgemm")


def test_engine_context_sets_and_restores_torchs_engine():
    before = torch.backends.quantized.engine
    with quantized_engine("qnnpack"):
        assert torch.backends.quantized.engine == "qnnpack"
    assert torch.backends.quantized.engine == before
    with pytest.raises(ValueError, match="fbgemm, qnnpack"), quantized_engine("onnx"):
        pass


def test_reference_is_a_converted_int8_model_close_to_fp32():
    calib, x = digits_data()
    model = make_model("resnet")
    ref = torch_reference(model, calib, "fbgemm_default", "fbgemm")
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in ref.modules())
    with quantized_engine("fbgemm"):
        out = ref(x)
    assert torch.nn.functional.cosine_similarity(out.flatten(), model(x).flatten(), dim=0) > 0.99
    assert torch_reference is qcal.torch_reference
