"""The dashboard under streamlit's AppTest: every page renders, and widgets change numbers.

Each interaction test changes one widget and checks that the number the page shows equals
the one qcal computes for the new selection (the frame's value, or qcal.int8's multiplier).
The first run computes the default comparison once (small: digits_cnn, the six presets,
fbgemm + qnnpack); streamlit's caches share it between the tests of this process.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the dashboard imports pages._shared

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = str(ROOT / "dashboard.py")
PAGES = ["compare", "scales", "layers", "requant", "explain", "runs"]
FIRST_RUN_TIMEOUT = 240  # the first run computes the default comparison
TIMEOUT = 60


@pytest.fixture(scope="module", autouse=True)
def _store(tmp_path_factory: pytest.TempPathFactory):
    """A store for this test session (shared with the browser test), unless CI set one."""
    old = os.environ.get("QCAL_STORE")
    if not old:
        os.environ["QCAL_STORE"] = str(tmp_path_factory.getbasetemp() / "dashboard-runs.sqlite")
    yield
    if not old:
        os.environ.pop("QCAL_STORE", None)


def app(page: str | None = None, **query: str):
    """A fresh AppTest of the dashboard, run once (on ``page`` if given)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(DASHBOARD, default_timeout=TIMEOUT)
    at.query_params.update(query)
    at.run(timeout=FIRST_RUN_TIMEOUT)
    if page is not None and page != "compare":
        at.switch_page(f"pages/{page}.py").run(timeout=FIRST_RUN_TIMEOUT)
    return at


def assert_clean(at) -> None:
    """No exception and no error box on the page."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def current_run():
    """The stored run the dashboard's default view shows (as the pages read it)."""
    from pages._shared import DEFAULT_BACKENDS, DEFAULT_MODEL
    from qcal import views
    from qcal.store import Store

    store = Store()
    run_id = views.find_run(store.list(), DEFAULT_MODEL, list(_schemes()), list(DEFAULT_BACKENDS))
    assert run_id, "the dashboard saved no run for its default comparison"
    return store.load(run_id)


def _schemes():
    import qcal

    return tuple(qcal.SCHEMES)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_without_exception(page):
    at = app(page)
    assert_clean(at)
    assert at.title, f"{page} shows no title"
