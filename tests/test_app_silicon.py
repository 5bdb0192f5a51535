"""The Simulation vs silicon page under streamlit's AppTest: its table is qcal.simulation_gap's for
the built-in PT2E example, its chart the differing elements by cause."""

from __future__ import annotations

import pytest
from test_app import app, assert_clean, table

pytest.importorskip("executorch.runtime", reason="the pt2e extra (requirements-dev.txt installs it)")

from qcal.reporting.silicon_view import silicon_view

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_silicon_page_shows_what_qcal_computes():
    at = app("silicon")
    assert_clean(at)
    assert at.title[0].value == "Simulation vs silicon"
    at.number_input(key="silicon_samples").set_value(40).run()
    at.button(key="silicon_run").click().run(timeout=240)
    assert_clean(at)
    shown = table(at, "layer", "differing", "inherited", "accumulation")
    expected = silicon_view("digits_cnn", True, 40).gap.layers
    assert list(shown["layer"]) == list(expected["layer"])
    assert list(shown["differing"]) == list(expected["differing"])
    assert list(shown["accumulation"]) == list(expected["accumulation"])
    assert len(at.get("plotly_chart")) == 1
    assert any("outputs" in c.value for c in at.caption)
