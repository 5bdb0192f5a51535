"""The Compare page with repairs under streamlit's AppTest: each picked repair adds a
``scheme + repair`` column, with the numbers and settings of the stored run."""

from __future__ import annotations

import pytest
from test_app import _store, app, assert_clean, metric  # noqa: F401  (_store: a store for these tests)

from qcal.store import Store
from qcal.store.zoo_runs import find_run

pytestmark = pytest.mark.usefixtures("one_thread")

LABEL = "per_tensor_symmetric + equalize"


def test_a_picked_repair_adds_its_column_beside_the_plain_scheme():
    at = app("compare", model="digits_mlp", schemes="per_tensor_symmetric", backends="fbgemm", repairs="equalize")
    assert_clean(at)
    assert at.multiselect(key="param_repairs").value == ["equalize"]
    store = Store()
    assert "dashboard-runs" in str(store.path)  # the test's own store, not data/runs.sqlite
    run = store.load(find_run(store.list(), "digits_mlp", ["per_tensor_symmetric", LABEL], ["fbgemm"]))
    assert list(run.summary["scheme"]) == ["per_tensor_symmetric", LABEL]
    assert any("per_tensor_symmetric + equalize**: equalize(relu6=bounded)" in c.value for c in at.caption)
    at.selectbox(key="param_scheme").set_value(LABEL).run()
    assert_clean(at)
    row = run.summary.set_index("scheme").loc[LABEL]
    assert metric(at, "int8 ").value == f"{row['value']:.2%}"
