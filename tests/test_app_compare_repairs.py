"""The Compare page with repairs under streamlit's AppTest: each picked repair adds a
``scheme + repair`` column, with the numbers and settings of the stored run."""

from __future__ import annotations

import os

import pytest
from test_app import _store, app, assert_clean, metric  # noqa: F401  (_store: a store for these tests)

from qcal.store import Store
from qcal.store.zoo_runs import find_run

pytestmark = pytest.mark.usefixtures("one_thread")

LABEL = "per_tensor_symmetric + equalize"


@pytest.fixture(scope="module")
def run_id():  # after the autouse _store: the test store
    """The stored run of the page's setup (the page finds it, or computes the same one)."""
    from pages._shared import EVAL_SAMPLES
    from qcal.store.zoo_runs import find_or_compute_zoo_run

    return find_or_compute_zoo_run("digits_mlp", ["per_tensor_symmetric", LABEL], ("fbgemm",),
                                   eval_samples=EVAL_SAMPLES)[0]


def test_a_picked_repair_adds_its_column_beside_the_plain_scheme(run_id):
    at = app("compare", model="digits_mlp", schemes="per_tensor_symmetric", backends="fbgemm", repairs="equalize")
    assert_clean(at)
    assert at.multiselect(key="param_repairs").value == ["equalize"]
    store = Store()
    assert str(store.path) == os.environ["QCAL_STORE"]  # the tests' (or CI's) store, not data/runs.sqlite
    assert find_run(store.list(), "digits_mlp", ["per_tensor_symmetric", LABEL], ["fbgemm"]) == run_id
    run = store.load(run_id)
    assert list(run.summary["scheme"]) == ["per_tensor_symmetric", LABEL]
    assert any("per_tensor_symmetric + equalize**: equalize(relu6=bounded)" in c.value for c in at.caption)
    at.selectbox(key="param_scheme").set_value(LABEL).run()
    assert_clean(at)
    row = run.summary.set_index("scheme").loc[LABEL]
    assert metric(at, "int8 ").value == f"{row['value']:.2%}"


def test_a_saved_runs_repaired_column_is_rebuilt_for_live_tensors(run_id):
    at = app("requant", model="digits_mlp", run=run_id, scheme=LABEL, backend="fbgemm")
    assert_clean(at)
    assert not at.info and any(c.value.startswith("Recomputed live") for c in at.caption)
