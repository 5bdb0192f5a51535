"""The Sensitivity page under AppTest: the scan's heatmap is qcal's sensitivity, the fallback
curve is qcal's, and the recipe builder's numbers follow the picked layers.

digits_mlp (three linear layers), one scheme and 50 held-out samples keep it quick.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the dashboard imports pages._shared

ROOT = Path(__file__).resolve().parents[1]
QUERY = {"model": "digits_mlp", "sens_schemes": "per_tensor_affine", "sens_eval": "50", "backend": "fbgemm"}
TIMEOUT = 240


@pytest.fixture(scope="module", autouse=True)
def _store(tmp_path_factory: pytest.TempPathFactory):
    old = os.environ.get("QCAL_STORE")
    os.environ["QCAL_STORE"] = str(tmp_path_factory.getbasetemp() / "sensitivity-runs.sqlite")
    yield
    if old:
        os.environ["QCAL_STORE"] = old
    else:
        os.environ.pop("QCAL_STORE", None)


def sensitivity_app(**query: str):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=TIMEOUT)
    at.query_params.update({**QUERY, **query})
    at.switch_page("pages/sensitivity.py").run(timeout=TIMEOUT)
    return at


def assert_clean(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


@pytest.fixture(scope="module")
def scanned():
    at = sensitivity_app()
    assert_clean(at)
    assert at.title[0].value == "Layer sensitivity"
    assert not at.get("plotly_chart"), "the scan starts on the button, not on page load"
    at.button(key="sens_scan").click().run(timeout=TIMEOUT)
    assert_clean(at)
    return at


TABLES = {"sens_rows": {"mode", "sqnr_db", "scheme"}, "sens_curve": {"step", "fp32_layers"},
          "recipe_layers": {"choice", "sqnr_db"}}


def _table(at, name):
    """The page's table ``name``, found by its columns (AppTest gives dataframes no key)."""
    return next(d.value for d in at.dataframe if TABLES[name] <= set(d.value.columns))


def test_the_heatmap_rows_are_qcals_sensitivity(scanned):
    from qcal.analysis.sensitivity import sensitivity
    from qcal.analysis.zoo_sensitivity import zoo_data

    model, calib, ev = zoo_data("digits_mlp", 50)
    want = sensitivity(model, calib, ev, "per_tensor_affine", "fbgemm")
    shown = _table(scanned, "sens_rows")
    assert list(shown["layer"]) == list(want["layer"])
    assert list(shown["value"]) == list(want["value"])
    figure = json.loads(scanned.get("plotly_chart")[0].proto.spec)
    assert figure["data"][0]["type"] == "heatmap"
    assert figure["data"][0]["y"] == list(dict.fromkeys(want["layer"]))


def test_the_fallback_curve_ends_at_fp32_and_has_one_step_per_layer(scanned):
    curve = _table(scanned, "sens_curve")
    assert list(curve["step"]) == [0, 1, 2, 3]
    assert curve["drop"].iloc[-1] == 0


def test_the_recipe_builder_follows_the_picked_layer_and_saves_a_run(scanned):
    import qcal
    from qcal.analysis.zoo_sensitivity import zoo_data
    from qcal.recipes import Recipe
    from qcal.store import Store

    at = scanned
    layer = next(iter(_table(at, "recipe_layers")["layer"]))
    at.selectbox(key=f"recipe_layer_{layer}").select("fp32").run(timeout=TIMEOUT)
    assert_clean(at)
    assert at.query_params["recipe"] == f"{layer}=fp32"
    model, calib, ev = zoo_data("digits_mlp", 50)
    qm = qcal.calibrate(model, calib, Recipe("per_tensor_affine", {layer: None}), "fbgemm")
    hits = sum(int((qm(x).argmax(1) == y).sum()) for x, y in ev)
    shown = next(m for m in at.metric if m.label.startswith("recipe "))
    assert shown.value == f"{hits / 50:.2%}"
    choices = _table(at, "recipe_layers").set_index("layer")
    assert choices.loc[layer, "choice"] == "fp32" and choices["sqnr_db"].isna().sum() == 1
    at.button(key="recipe_save").click().run(timeout=TIMEOUT)
    run_id = at.session_state["recipe_saved"]
    meta = Store().load(run_id).meta
    assert next(iter(meta["recipes"].values()))["layers"] == {layer: "fp32"}


def test_the_compare_page_shows_the_saved_recipe_beside_the_presets(scanned):
    from streamlit.testing.v1 import AppTest

    import qcal
    from qcal.analysis.zoo_sensitivity import zoo_data
    from qcal.store import Store

    at = scanned
    if "recipe_saved" not in at.session_state:  # when run alone
        at.button(key="recipe_save").click().run(timeout=TIMEOUT)
    recipe_run = at.session_state["recipe_saved"]
    model, calib, ev = zoo_data("digits_mlp", 50)
    presets = qcal.compare(model, calib, ev, ["per_tensor_affine"], ["fbgemm"], meta={"model": "digits_mlp"})
    preset_run = Store().save_comparison(presets)
    page = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=TIMEOUT)
    page.query_params.update({"run": preset_run})
    page.run(timeout=TIMEOUT)
    assert_clean(page)
    table = next(d.value for d in page.dataframe if {"kind", "fp32_layers"} <= set(d.value.columns))
    assert list(table["kind"]) == ["preset", "recipe"]
    assert list(table["run_id"]) == [preset_run, recipe_run]
    assert table["value"].iloc[1] == Store().load(recipe_run).frames["summary"]["value"].iloc[0]
    recipe_name = table["scheme"].iloc[1]
    assert page.selectbox(key="onnx_recipe").value == f"{recipe_name} (run {recipe_run})"
    assert f"Download {recipe_name} as ONNX (QDQ)" in [b.proto.label for b in page.get("download_button")]


def test_the_saved_recipe_onnx_file_is_what_onnxruntime_runs_as_predicted(scanned):
    """The Compare page's recipe download (written on the click): a checked QDQ file whose
    onnxruntime output equals the ort flavour of the same recipe, its fp32 layers included."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from pages._onnx import recipe_onnx_data
    from qcal.recipes import Recipe
    from qcal.reporting.views import calibrate_zoo
    from qcal.store import Store
    from qcal.zoo.datasets import digits_splits

    at = scanned
    if "recipe_saved" not in at.session_state:
        at.button(key="recipe_save").click().run(timeout=TIMEOUT)
    run_id = at.session_state["recipe_saved"]
    meta = Store().load(run_id).meta
    (name, data), = meta["recipes"].items()
    recipe = Recipe.from_data(data)
    assert recipe.fp32_layers(["fc1", "fc2", "fc3"])  # the builder kept a layer in fp32
    blob = recipe_onnx_data("digits_mlp", run_id, name)()
    onnx.checker.check_model(onnx.load_from_string(blob), full_check=True)
    x = digits_splits().test[0][:64]
    (theirs,) = ort.InferenceSession(blob, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
    qm = calibrate_zoo("digits_mlp", recipe, "ort", calib_samples=meta.get("calib_samples"))
    assert int((qm(x).numpy() != theirs).sum()) == 0 and theirs.dtype == np.float32
