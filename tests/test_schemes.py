from typing import get_args

import pytest
import torch
from torch import nn

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
    (check_backend, "fbgem", "unknown backend 'fbgem'; expected one of: fbgemm, qnnpack, onnx, q31"),
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
    with pytest.raises(ValueError, match=r"^unknown backend 'fbgem'; expected one of: fbgemm, qnnpack, onnx, q31$"):
        call()
