"""The scheme text form: round trips, every bad field named, backend refusals."""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcal.runnable import check_runnable
from qcal.scheme_text import format_scheme, parse_scheme, run_schemes
from qcal.schemes import DTYPES, OBSERVERS, QSCHEMES, SCHEMES, QSpec, Scheme

_OPTIONS = {
    "minmax": st.just({}),
    "moving_average": st.fixed_dictionaries({}, optional={
        "averaging_constant": st.floats(1e-4, 1.0, allow_nan=False)}),
    "histogram": st.fixed_dictionaries({}, optional={"bins": st.integers(2, 4096)}),
    "percentile": st.fixed_dictionaries(
        {"percentile": st.floats(50.0, 100.0, exclude_min=True, allow_nan=False)},
        optional={"bins": st.integers(2, 4096)}),
    "entropy": st.fixed_dictionaries({}, optional={"bins": st.integers(2, 4096)}),
    "mse": st.fixed_dictionaries({}, optional={"bins": st.integers(2, 4096)}),
}


@st.composite
def specs(draw, per_tensor_only: bool = False) -> QSpec:
    qscheme = draw(st.sampled_from([q for q in QSCHEMES if not (per_tensor_only and "channel" in q)]))
    observer = draw(st.sampled_from([o for o in OBSERVERS if not ("channel" in qscheme and o == "histogram")]))
    dtype = draw(st.sampled_from(DTYPES))
    reduce_range = draw(st.booleans()) and not (qscheme.endswith("symmetric") and dtype == "quint8")
    lo, hi = draw(st.sampled_from([(None, None), (0, 15), (0, 200)] if dtype == "quint8" else
                                  [(None, None), (-127, 127), (-8, 7), (-3, 0)]))
    return QSpec(dtype, qscheme, observer, reduce_range=reduce_range,
                 ch_axis=draw(st.integers(0, 3)), options=draw(_OPTIONS[observer]), quant_min=lo, quant_max=hi)


# names: any text without the separators; surrounding spaces are not part of a name
names = (st.text(string.ascii_letters + string.digits + "_-.+:,() é", min_size=1, max_size=20)
         .map(str.strip).filter(lambda s: s and s not in SCHEMES))


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)  # 2 shared cores
@given(weight=specs(), activation=specs(per_tensor_only=True), name=st.one_of(st.none(), names))
def test_text_round_trip(weight: QSpec, activation: QSpec, name: str | None) -> None:
    unnamed = parse_scheme(format_scheme(Scheme("x", weight, activation)).split(";", 1)[1])
    scheme = unnamed if name is None else Scheme(name, weight, activation, unnamed.description)
    text = format_scheme(scheme)
    back = parse_scheme(text)
    assert (back.name, back.weight, back.activation) == (scheme.name, weight, activation)
    assert format_scheme(back) == text


def test_the_readme_example_and_defaults() -> None:
    s = parse_scheme(" w = per_channel_symmetric/minmax ; a=per_tensor_affine/percentile:99.99 ")
    assert s.weight == QSpec("qint8", "per_channel_symmetric", "minmax")
    assert s.activation == QSpec("quint8", "per_tensor_affine", "percentile", reduce_range=True,
                                 options={"percentile": 99.99})
    assert s.name == "w=per_channel_symmetric/minmax;a=per_tensor_affine/percentile:99.99"
    assert parse_scheme("a=per_tensor_affine/percentile;w=per_channel_symmetric/minmax") == s


def test_a_preset_name_and_its_text_are_the_preset() -> None:
    for name, preset in SCHEMES.items():
        assert parse_scheme(name) is preset
        assert format_scheme(preset) == name


@pytest.mark.parametrize(("text", "named"), [
    ("w=per_channel_symmetric/minmax", "missing field a="),
    ("a=per_tensor_affine/minmax", "missing field w="),
    ("w=per_chanel_symmetric/minmax;a=per_tensor_affine/minmax", "bad weight qscheme 'per_chanel_symmetric'; accepted: per_tensor_affine"),
    ("w=per_channel_symmetric/minmaxx;a=per_tensor_affine/minmax", "bad weight observer 'minmaxx'; accepted: minmax"),
    ("w=per_channel_symmetric/minmax;a=per_tensor_affine/percentile:101", "bad activation percentile p '101'; accepted: a number in (50, 100]"),
    ("w=per_channel_symmetric/minmax;a=per_tensor_affine/percentile:x", "bad activation percentile p 'x'"),
    ("w=per_channel_symmetric/minmax:3;a=per_tensor_affine/minmax", "bad weight ':' argument 'minmax:3'"),
    ("w=per_channel_symmetric/minmax/dtype=int4;a=per_tensor_affine/minmax", "bad dtype 'int4'; accepted: quint8, qint8"),
    ("w=per_channel_symmetric/minmax;a=per_tensor_affine/minmax/reduce_range=yes", "bad reduce_range 'yes'; accepted: true, false"),
    ("w=per_channel_symmetric/minmax;a=per_tensor_affine/histogram/bins=1", "bad bins '1'; accepted: a whole number >= 2"),
    ("w=per_channel_symmetric/minmax/bins=8;a=per_tensor_affine/minmax", "bad weight modifier 'bins=8'; accepted: bins on the histogram"),
    ("w=per_channel_symmetric/minmax/colour=red;a=per_tensor_affine/minmax", "bad weight modifier 'colour=red'; accepted: dtype=..."),
    ("w=per_channel_symmetric/minmax;a=per_tensor_affine/moving_average/averaging_constant=2", "bad averaging_constant '2'"),
    ("w=per_channel_symmetric;a=per_tensor_affine/minmax", "bad weight spec 'per_channel_symmetric'; accepted: qscheme/observer"),
    ("w=per_channel_symmetric/histogram;a=per_tensor_affine/minmax", "histogram observer exists per tensor only"),
    ("w=per_channel_symmetric/minmax;a=per_channel_affine/minmax", "activations are quantized per tensor"),
    ("w=per_channel_symmetric/minmax;a=per_tensor_symmetric/minmax", "symmetric quint8 with reduce_range is refused"),
    ("w=per_channel_symmetric/minmax;a=per_tensor_affine/minmax;b=x", "bad field 'b=x'; accepted: name=NAME"),
    ("w=per_channel_symmetric/minmax;w=per_tensor_affine/minmax;a=per_tensor_affine/minmax", "each of name, w, a once"),
    ("name=a/b;w=per_channel_symmetric/minmax;a=per_tensor_affine/minmax", "bad name 'a/b'"),
    ("w=per_channel_symmetric/minmax/quant_min=-127;a=per_tensor_affine/minmax", "quant_min and quant_max go together"),
    ("w=per_channel_symmetric/minmax/quant_min=x/quant_max=7;a=per_tensor_affine/minmax", "bad quant_min 'x'; accepted: a whole number"),
    ("w=per_channel_symmetric/minmax/quant_min=-300/quant_max=7;a=per_tensor_affine/minmax",
     "weight spec 'per_channel_symmetric/minmax/quant_min=-300/quant_max=7': quant_min..quant_max -300..7 must be"),
    ("w=per_channel_symmetric/minmax;a=per_tensor_affine/minmax/quant_min=1/quant_max=100", "must include 0"),
])
def test_every_bad_field_is_named_with_its_value_and_the_accepted_ones(text: str, named: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        parse_scheme(text)
    assert named in str(info.value)


def test_a_non_string_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="must be a string, got int"):
        parse_scheme(3)  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "backend", "reason"), [
    ("w=per_channel_symmetric/minmax;a=per_tensor_affine/minmax/dtype=qint8", "fbgemm", "qint8 activations: fbgemm's kernels take quint8 activations only"),
    ("w=per_channel_symmetric/minmax;a=per_tensor_affine/minmax/dtype=qint8", "qnnpack", "qint8 activations: qnnpack's kernels take quint8"),
    ("w=per_channel_affine/minmax/dtype=quint8;a=per_tensor_affine/minmax", "fbgemm", "quint8 weights: fbgemm's kernels take qint8 weights only"),
])
def test_combinations_a_backend_cannot_run_are_refused_with_the_reason(text, backend, reason) -> None:
    with pytest.raises(ValueError, match="cannot run on") as info:
        check_runnable(parse_scheme(text), backend)
    assert reason in str(info.value)


def test_quint8_weights_run_on_onnx() -> None:
    check_runnable(parse_scheme("w=per_channel_affine/minmax/dtype=quint8;a=per_tensor_affine/minmax"), "onnx")


def test_run_schemes_rebuilds_built_and_preset_schemes() -> None:
    built = parse_scheme("name=p9;w=per_channel_symmetric/minmax;a=per_tensor_affine/percentile:99.9")
    meta = {"schemes": ["per_tensor_affine", "p9"],
            "scheme_texts": {"per_tensor_affine": "per_tensor_affine", "p9": format_scheme(built)}}
    assert run_schemes(meta) == {"per_tensor_affine": SCHEMES["per_tensor_affine"], "p9": built}
    assert run_schemes({"schemes": ["fbgemm_default"]}) == {"fbgemm_default": SCHEMES["fbgemm_default"]}


def test_build_scheme_from_form_choices_equals_the_text():
    from qcal.scheme_text import build_scheme

    built = build_scheme("p", {"qscheme": "per_channel_symmetric", "observer": "minmax", "dtype": "qint8"},
                         {"qscheme": "per_tensor_affine", "observer": "percentile", "reduce_range": False},
                         percentile=99.9, bins=512)
    assert built == parse_scheme("name=p;w=per_channel_symmetric/minmax;"
                                 "a=per_tensor_affine/percentile:99.9/reduce_range=false/bins=512")
    with pytest.raises(ValueError, match=r"bad activation percentile p '20\.0'"):
        build_scheme("", {"qscheme": "per_tensor_affine", "observer": "minmax"},
                     {"qscheme": "per_tensor_affine", "observer": "percentile"}, percentile=20.0)


def test_quant_range_text_and_recipe_files(tmp_path) -> None:
    """quant_min/quant_max as modifiers (after ch_axis, before the options); left out when
    unset, so texts and recipe files of specs without one read as before."""
    from qcal.io.recipe_files import read_recipe, recipe_text, write_recipe
    from qcal.recipes import Recipe

    text = "w=per_channel_symmetric/minmax/quant_min=-127/quant_max=127;a=per_tensor_affine/minmax"
    xnn = parse_scheme(text)
    assert xnn.weight == QSpec("qint8", "per_channel_symmetric", quant_min=-127, quant_max=127)
    assert format_scheme(xnn) == text
    plain = parse_scheme("name=plain;w=per_channel_symmetric/minmax;a=per_tensor_affine/minmax")
    assert "quant" not in format_scheme(plain)
    recipe = Recipe(plain, {"fc": Scheme("xnn", xnn.weight, xnn.activation)}, name="r")
    toml = recipe_text(recipe)
    assert toml.count("quant_min") == 1 and "null" not in toml and "quant" not in recipe_text(Recipe(plain))
    for suffix in (".toml", ".json"):
        assert read_recipe(write_recipe(recipe, tmp_path / f"r{suffix}")) == recipe
