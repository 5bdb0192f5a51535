"""A registered PT2E model (its factory returns the convert_pt2e result) on the Layers and Requant
pages (AppTest): its run is compare_pt2e's one column (scheme pt2e on xnnpack), the Layers page
shows its per-layer errors, the Requant page works an element out from from_pt2e's integers, live
and from a saved run (the model read again from its registered factory)."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from test_app import _store, app, assert_clean, metric, table  # noqa: F401 (_store: a session store)

pytest.importorskip("executorch.runtime", reason="the pt2e extra (requirements-dev.txt installs it)")

from tests.cli.test_cli_silicon import MODULE  # conv-ReLU-linear under XNNPACKQuantizer


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    from pages._shared import model_catalogue

    folder = tmp_path_factory.mktemp("pt2e_team")
    (folder / "pt2e_team.py").write_text(textwrap.dedent(MODULE))
    (folder / "models.toml").write_text('[models.apppt2e]\nfactory = "pt2e_team:build"\ncalib = "calib.npz"\n'
                                        'eval = "eval.npz"\ndescription = "a converted PT2E model"\n')
    g = np.random.default_rng(0)
    np.savez(folder / "calib.npz", x=(g.standard_normal((16, 1, 8, 8)) * 2).astype(np.float32))
    np.savez(folder / "eval.npz", x=(g.standard_normal((24, 1, 8, 8)) * 2).astype(np.float32),
             y=g.integers(0, 3, 24))
    mp = pytest.MonkeyPatch()
    mp.setenv("QCAL_MODELS", str(folder / "models.toml"))
    model_catalogue.clear()
    yield "apppt2e"
    mp.undo()
    model_catalogue.clear()


def test_a_registered_pt2e_model_on_the_layers_and_requant_pages(registered):
    from qcal.store.zoo_runs import compare_zoo

    at = app("layers", model=registered, schemes="per_tensor_affine", backends="fbgemm")
    assert_clean(at)
    shown = table(at, "layer", "pt2e / xnnpack")  # one column: the model's own quantization
    expected = compare_zoo(registered, eval_samples=300).layers  # the page's run: pt2e on xnnpack
    assert list(expected["scheme"].unique()) == ["pt2e"] and list(expected["backend"].unique()) == ["xnnpack"]
    assert set(shown["layer"]) == set(expected["layer"]) == {"0", "3"}
    at.switch_page("pages/requant.py").run()
    assert_clean(at)
    assert at.selectbox(key="param_scheme").value == "pt2e"
    assert at.selectbox(key="param_backend").value == "xnnpack"
    assert metric(at, "worked steps").value == metric(at, "qcal integer engine").value
    assert any("by the delegate" in str(d.value.to_dict()) for d in at.dataframe)


def test_a_saved_pt2e_run_reopens_on_the_requant_page(registered):
    from qcal.store.store import Store
    from qcal.store.zoo_runs import compare_zoo

    run_id = Store().save_comparison(compare_zoo(registered, eval_samples=24))
    at = app("requant", model=registered, run=run_id, scheme="pt2e", backend="xnnpack", layer="3")
    assert_clean(at)
    assert any("saved run" in c.value for c in at.caption)
    assert metric(at, "worked steps").value == metric(at, "qcal integer engine").value
