import pytest

import qcal
from qcal.schemes import QSpec, Scheme


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
