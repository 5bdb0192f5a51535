"""The dashboard explores any scheme on any registered model (AppTest).

A percentile scheme built in the dashboard is compared against a preset; a URL carrying it
reopens the same view; a registered model (a temporary TOML, module and data files) renders
on every page without exception, Requant math included.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from test_app import PAGES, app, assert_clean, metric

from qcal.scheme_text import parse_scheme

BUILT = "name=p999;w=per_channel_symmetric/minmax;a=per_tensor_affine/percentile:99.9"
SMALL = {"schemes": "per_tensor_affine", "backends": "fbgemm"}


def _stored_summary(at):
    from qcal.store.store import Store

    caption = next(c.value for c in at.caption if "live comparison" in c.value or "saved run" in c.value)
    run_id = caption.split("`")[1]
    return Store().load(run_id)


def test_a_percentile_scheme_built_in_the_dashboard_is_compared_against_a_preset():
    at = app("compare", **SMALL)
    at.selectbox(key="build_a_observer").set_value("percentile").run()
    at.number_input(key="build_percentile").set_value(99.9).run()
    at.text_input(key="build_name").set_value("p999").run()
    at.button(key="build_add").click().run()
    assert_clean(at)
    assert at.query_params["schemes"] == "per_tensor_affine,p999"
    assert parse_scheme(at.query_params["build"]) == parse_scheme(BUILT)
    run = _stored_summary(at)
    assert list(run.summary["scheme"]) == ["per_tensor_affine", "p999"]
    assert run.meta["scheme_texts"]["p999"] == BUILT
    at.selectbox(key="param_scheme").set_value("p999").run()
    row = run.summary[run.summary["scheme"] == "p999"].iloc[0]
    assert metric(at, "int8 ").value == f"{row['value']:.2%}"


def test_a_url_carrying_a_built_scheme_reopens_the_same_view():
    at = app("compare", schemes="per_tensor_affine,p999", backends="fbgemm", build=BUILT, scheme="p999")
    assert_clean(at)
    assert at.selectbox(key="param_scheme").value == "p999"
    run = _stored_summary(at)
    assert run.meta["scheme_texts"]["p999"] == BUILT
    row = run.summary[run.summary["scheme"] == "p999"].iloc[0]
    assert metric(at, "int8 ").value == f"{row['value']:.2%}"
    at.switch_page("pages/requant.py").run()  # live tensors for the built scheme
    assert_clean(at)
    assert at.selectbox(key="param_scheme").value == "p999"
    assert metric(at, "worked steps").value == metric(at, "qcal integer engine").value


MODULE = """
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 3))
"""


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """QCAL_MODELS naming a temporary TOML with one model module and its data files."""
    from pages._shared import model_catalogue

    folder = tmp_path_factory.mktemp("team")
    (folder / "teamzoo_app.py").write_text(textwrap.dedent(MODULE))
    (folder / "models.toml").write_text(
        '[models.teamnet]\nfactory = "teamzoo_app:build"\ncalib = "calib.npz"\n'
        'eval = "eval.npz"\ndescription = "the team\'s net"\n'
        '[models.broken]\nfactory = "teamzoo_app:missing"\ncalib = "calib.npz"\neval = "eval.npz"\n')
    g = np.random.default_rng(0)
    np.savez(folder / "calib.npz", x=g.standard_normal((32, 1, 8, 8)).astype(np.float32))
    np.savez(folder / "eval.npz", x=g.standard_normal((40, 1, 8, 8)).astype(np.float32),
             y=g.integers(0, 3, 40))
    mp = pytest.MonkeyPatch()
    mp.setenv("QCAL_MODELS", str(folder / "models.toml"))
    model_catalogue.clear()
    yield
    mp.undo()
    model_catalogue.clear()


@pytest.mark.parametrize("page", PAGES)
def test_a_registered_model_renders_on_every_page(registered, page):
    at = app(page, model="teamnet", schemes="per_tensor_affine,per_channel_symmetric", backends="fbgemm")
    assert_clean(at)
    assert at.sidebar.selectbox(key="param_model").value == "teamnet"
    assert any("broken" in w.value and "no attribute 'missing'" in w.value for w in at.sidebar.warning)
    if page == "requant":
        assert metric(at, "worked steps").value == metric(at, "qcal integer engine").value
    if page == "scales":
        assert any("Observer lab" in h.value for h in at.subheader)
        at.toggle(key="show_trajectory").set_value(True).run()
        assert_clean(at)
        assert any(t.value.columns.tolist()[:3] == ["observer", "layer", "samples"] for t in at.dataframe)
