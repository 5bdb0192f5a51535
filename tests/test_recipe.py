"""qcal.Recipe: a per-layer choice of scheme, frozen, hashable, round-tripping through data."""

import dataclasses
import json

import pytest

import qcal
from qcal.recipes import Recipe
from qcal.schemes import SCHEMES, QSpec, Scheme


def test_recipe_resolves_presets_and_looks_layers_up_by_nearest_ancestor():
    r = Recipe("per_tensor_affine", {"fc": None, "features.3": "per_channel_symmetric"}, name="mine")
    assert r.name == "mine"
    assert r.default is SCHEMES["per_tensor_affine"]
    assert r.scheme_for("fc") is None
    assert r.scheme_for("features.3") is SCHEMES["per_channel_symmetric"]
    assert r.scheme_for("features.3.conv") is SCHEMES["per_channel_symmetric"]  # ancestor
    assert r.scheme_for("features.30") is SCHEMES["per_tensor_affine"]  # not a prefix match
    assert r.fp32_layers(["features.0", "fc"]) == ["fc"]
    assert qcal.Recipe is Recipe


def test_recipe_is_frozen_and_hashable_with_layer_order_irrelevant():
    a = Recipe(None, {"b": "per_tensor_affine", "a": None})
    b = Recipe(None, {"a": "fp32", "b": SCHEMES["per_tensor_affine"]})
    assert a == b and hash(a) == hash(b) and a.name == b.name
    assert len({a, b}) == 1
    with pytest.raises(AttributeError):
        a.name = "x"
    assert Recipe(None, {"a": None}).name != Recipe(None, {"b": None}).name


def test_recipe_round_trips_through_json_including_custom_schemes():
    custom = Scheme("mine", QSpec("qint8", "per_channel_affine", "moving_average", options={"averaging_constant": 0.1}),
                    SCHEMES["per_tensor_affine"].activation)
    r = Recipe("fbgemm_default", {"x.0": custom, "fc": None}, name="r1")
    data = json.loads(json.dumps(r.to_data()))
    assert data["layers"]["fc"] == "fp32" and data["default"] == "fbgemm_default"
    assert Recipe.from_data(data) == r


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"default": "per_tensr_affine"}, "Recipe default: unknown scheme 'per_tensr_affine'"),
    ({"layers": {"fc": "bogus"}}, "Recipe layer 'fc': unknown scheme 'bogus'"),
    ({"layers": {"fc": 3}}, "scheme must be a preset name"),
    ({"default": "per_tensor_affine", "layers": {"fc": Scheme(
        "s8", QSpec("qint8"), QSpec("qint8"))}}, "mixes activation dtypes"),
])
def test_bad_recipes_name_the_value(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        Recipe(**kwargs)


def test_check_layers_lists_valid_names_and_says_why_for_batchnorm():
    r = Recipe(None, {"features.1": None, "fc": None})
    with pytest.raises(ValueError, match=r"names \['features.1'\].*BatchNorm2d.*valid layer names: features.0, fc"):
        r.check_layers(["features.0", "fc"], {"features.1": "BatchNorm2d"})
    r.check_layers(["features.1", "fc"])  # no error


def test_from_data_refuses_unknown_fields():
    with pytest.raises(ValueError, match="unknown recipe fields"):
        Recipe.from_data({"default": "per_tensor_affine", "layer": {}})


def test_unset_code_ranges_stay_out_of_a_recipes_data_and_name():
    base = SCHEMES["per_tensor_affine"]
    custom = dataclasses.replace(base, name="c", weight=dataclasses.replace(base.weight, observer="moving_average"))
    data = Recipe("fbgemm_default", {"conv1": custom}).to_data()["layers"]["conv1"]
    assert "quant_min" not in data["weight"] and "quant_max" not in data["activation"]
    ranged = dataclasses.replace(custom, weight=dataclasses.replace(custom.weight, quant_min=-127, quant_max=127))
    with_range = Recipe("fbgemm_default", {"conv1": ranged})
    assert with_range.to_data()["layers"]["conv1"]["weight"]["quant_min"] == -127
    assert with_range.name != Recipe("fbgemm_default", {"conv1": custom}).name
    assert Recipe.from_data(with_range.to_data()) == with_range
