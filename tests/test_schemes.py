import warnings
from typing import get_args

import pytest
import torch
from torch import nn
from torch.ao.quantization.observer import MinMaxObserver

import qcal
from qcal.schemes import BACKENDS, MODES, Backend, Mode, QSpec, Scheme, check_backend, check_mode


def test_presets_match_the_design_table():
    s = qcal.SCHEMES
    assert set(s) >= {
        "per_tensor_affine", "per_tensor_symmetric", "per_channel_affine",
        "per_channel_symmetric", "fbgemm_default", "qnnpack_default",
    }
    generic = ["per_tensor_affine", "per_tensor_symmetric", "per_channel_affine", "per_channel_symmetric"]
    for name in generic:
        assert s[name].weight.dtype == "qint8"
        assert s[name].weight.qscheme == name
        assert s[name].activation == QSpec("quint8", "per_tensor_affine", "minmax", reduce_range=True)
    fb, qn = s["fbgemm_default"], s["qnnpack_default"]
    assert (fb.weight.qscheme, fb.activation.observer, fb.activation.reduce_range) == (
        "per_channel_symmetric", "histogram", True)
    assert (qn.weight.qscheme, qn.activation.observer, qn.activation.reduce_range) == (
        "per_tensor_symmetric", "histogram", False)
    assert all(len(x.description) > 100 for x in s.values())


def test_qspec_is_frozen_hashable_and_normalises_options():
    a = QSpec("quint8", options={"percentile": 99.9, "bins": 2048})
    b = QSpec("quint8", options=(("bins", 2048), ("percentile", 99.9)))
    assert a == b and hash(a) == hash(b)
    assert a.option("percentile") == 99.9
    with pytest.raises(AttributeError):
        a.dtype = "qint8"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dtype": "int4"}, "unknown dtype 'int4'; expected one of: quint8, qint8"),
        ({"qscheme": "per_row"}, r"unknown qscheme 'per_row'"),
        ({"observer": "kmeans"}, "expected one of: minmax, moving_average, histogram"),
        ({"qscheme": "per_channel_affine", "observer": "histogram"}, "per tensor only"),
    ],
)
def test_bad_qspec_names_the_value_and_the_choices(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QSpec(**kwargs)


def test_unknown_scheme_name_lists_presets():
    with pytest.raises(ValueError, match=r"unknown scheme 'int4_magic'.*fbgemm_default"):
        qcal.resolve_scheme("int4_magic")


def test_activation_spec_must_be_per_tensor():
    with pytest.raises(ValueError, match="per tensor"):
        Scheme("x", QSpec("qint8"), QSpec("quint8", "per_channel_affine"))


@pytest.mark.parametrize("check, value, message", [
    (check_backend, "fbgem", "unknown backend 'fbgem'; expected one of: fbgemm, qnnpack, onnx, q31, x86, ort, xnnpack"),
    (check_mode, "fx", "unknown mode 'fx'; expected one of: auto, graph, modules"),
])
def test_one_validator_per_choice_names_the_value_and_every_accepted_one(check, value, message):
    with pytest.raises(ValueError) as caught:
        check(value)
    assert str(caught.value) == message
    assert check(get_args(Backend if check is check_backend else Mode)[0]) in (BACKENDS + MODES)


@pytest.mark.parametrize("call", [
    lambda: qcal.int8.requant_multipliers(0.5, 0.25, 1.0, backend="fbgem"),
    lambda: qcal.int8.pack_linear(torch.zeros(2, 3, dtype=torch.int8), 0.1, 0, None, backend="fbgem"),
    lambda: qcal.int8.avg_pool2d(torch.zeros(1, 1, 2, 2, dtype=torch.uint8), 0.1, 0, 2, backend="fbgem"),
    lambda: qcal.calibrate(nn.Linear(2, 2), torch.zeros(1, 2), "per_tensor_affine", backend="fbgem"),
])
def test_every_entry_point_refuses_an_unknown_backend_with_the_same_message(call):
    # requant_multipliers also takes the "onednn" flavour that x86 dispatches to
    with pytest.raises(ValueError, match=r"^unknown backend 'fbgem'; expected one of: fbgemm, qnnpack, onnx, q31, x86, ort, xnnpack(, onednn)?$"):
        call()


def test_quant_range_defaults_to_none_and_keeps_every_preset_unchanged():
    spec = QSpec("qint8", "per_channel_symmetric")
    assert (spec.quant_min, spec.quant_max, spec.custom_range) == (None, None, False)
    assert spec.code_range() == (-128, 127)
    assert QSpec("quint8", reduce_range=True).code_range() == (0, 127)
    torch_presets = [s for name, s in qcal.SCHEMES.items() if not name.startswith("xnnpack")]
    assert all(not s.weight.custom_range and not s.activation.custom_range for s in torch_presets)
    assert qcal.SCHEMES["xnnpack_default"].weight.code_range() == (-127, 127)  # XNNPACKQuantizer's weights
    xnn = QSpec("qint8", "per_channel_symmetric", quant_min=-127, quant_max=127)
    assert xnn != spec and xnn == QSpec("qint8", "per_channel_symmetric", quant_min=-127, quant_max=127)
    assert xnn.code_range() == (-127, 127) and "quant_min=-127 quant_max=127" in xnn.label()
    assert "quant" not in spec.label()


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"quant_min": -127}, ValueError, "quant_min and quant_max go together"),
    ({"quant_max": 7}, ValueError, "quant_min and quant_max go together"),
    ({"quant_min": -129, "quant_max": 127}, ValueError, r"-129..127 must be a non-empty range within qint8's -128..127"),
    ({"dtype": "quint8", "quant_min": 0, "quant_max": 256}, ValueError, "within quint8's 0..255"),
    ({"quant_min": 5, "quant_max": 5}, ValueError, "quant_min < quant_max"),
    ({"quant_min": 7, "quant_max": -8}, ValueError, "non-empty range"),
    ({"dtype": "quint8", "quant_min": 10, "quant_max": 100}, ValueError, "must include 0"),
    ({"quant_min": 0, "quant_max": 1, "reduce_range": True}, ValueError, "reduce_range halves .* to 0..0"),
    ({"quant_min": -8.0, "quant_max": 7}, TypeError, "quant_min must be a whole number"),
    ({"quant_min": -8, "quant_max": True}, TypeError, "quant_max must be a whole number"),
])
def test_bad_quant_range_says_what_is_wrong(kwargs, error, message):
    with pytest.raises(error, match=message):
        QSpec(**{"dtype": "qint8", **kwargs})


@pytest.mark.parametrize(("dtype", "qmin", "qmax"), [
    ("qint8", -127, 127), ("qint8", -8, 7), ("qint8", -128, 0), ("qint8", -3, 100), ("quint8", 0, 15), ("quint8", 0, 255),
])
@pytest.mark.parametrize("reduce_range", [False, True])
def test_code_range_is_torchs_calculate_qmin_qmax(dtype, qmin, qmax, reduce_range):
    """torch keeps a given range and then halves it under reduce_range (it does not ignore it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's reduce_range deprecation
        theirs = MinMaxObserver(dtype=getattr(torch, dtype), reduce_range=reduce_range, quant_min=qmin, quant_max=qmax)
    spec = QSpec(dtype, reduce_range=reduce_range, quant_min=qmin, quant_max=qmax)
    assert spec.code_range() == (theirs.quant_min, theirs.quant_max)
