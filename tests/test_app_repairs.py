"""The Repairs page under streamlit's AppTest: its table is qcal's repair_table, its picture
equalize's weight ranges."""

from __future__ import annotations

import pytest
from test_app import app, assert_clean, table

from qcal.reporting.repair_view import repair_view

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_repairs_page_shows_what_qcal_computes():
    at = app("repairs", model="digits_mlp")
    assert_clean(at)
    assert at.title[0].value.startswith("Repairs")
    at.button(key="repair_run").click().run(timeout=240)
    assert_clean(at)
    shown = table(at, "repair", "int8_metric")
    expected = repair_view("digits_mlp", "per_tensor_symmetric", "bounded").table
    assert list(shown["repair"]) == list(expected["repair"])
    assert list(shown["int8_metric"]) == list(expected["int8_metric"])
    assert len(at.get("plotly_chart")) == 1 and "equalize (relu6=bounded)" in at.code[0].value
