"""Simulation vs silicon: torch's converted PT2E module against ExecuTorch's XNNPACK integers,
per layer, with the cause of each differing element (qcal.simulation_gap)."""

import streamlit as st

from pages._shared import zoo_names
from pages._state import require_router, select_param, show_table
from qcal.reporting.silicon_view import cause_figure, silicon_view

GRANULARITY = ("per channel", "per tensor")


@st.cache_resource(show_spinner="Quantizing with XNNPACKQuantizer and comparing…", max_entries=8)
def _view(model: str, granularity: str, samples: int):
    return silicon_view(model, granularity == "per channel", samples)


def silicon_page() -> None:
    require_router()
    st.title("Simulation vs silicon")
    with st.container(key="silicon_block"):
        silicon_section()


def silicon_section() -> None:
    """The choices, the button, then the table and the chart."""
    cols = st.columns(3)
    models = zoo_names()
    model = select_param("PT2E model", "pt2e_model", models, "digits_cnn" if "digits_cnn" in models else None,
                         where=cols[0], help="A zoo model quantized here with XNNPACKQuantizer, or a registered "
                                             "model whose factory returns a convert_pt2e result")
    granularity = select_param("Weights", "pt2e_weights", list(GRANULARITY), "per channel", where=cols[1])
    samples = int(cols[2].number_input("Held-out inputs", 10, 1000, 200, step=10, key="silicon_samples"))
    st.markdown("Each fused conv/linear/add as torch's converted module simulates it (float ops on "
                "dequantized values, then quantize) against what ExecuTorch's XNNPACK delegate computes "
                "(`qcal.from_pt2e`, bit for bit). Each differing element is recomputed with one cause at a "
                "time switched to torch's way; the first that gives torch's value names it.")
    ran = st.session_state.setdefault("silicon_ran", set())
    key = (model, granularity, samples)
    if st.button("Compare", key="silicon_run", type="primary"):
        ran.add(key)
    if key not in ran or model is None:
        return
    view = _view(model, granularity, samples)
    st.caption(view.caption)
    show_table(view.gap.layers, key="silicon_table")
    st.plotly_chart(cause_figure(view.gap.by_cause()), key="silicon_chart")


silicon_page()
