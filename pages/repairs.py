"""Repairs: why per-tensor failed (each channel's weight range before and after equalization)
and the accuracy each repair adds (qcal.equalize, qcal.correct_bias, qcal.adaround)."""

import streamlit as st

from pages._shared import DEFAULT_MODEL, scheme_names, zoo_names
from pages._state import get_param, require_router, select_param, show_table
from qcal.reporting.repair_view import repair_view, weight_range_change_figure

RELU6 = ("bounded", "replace", "keep")


@st.cache_resource(show_spinner=False, max_entries=16)
def _view(model: str, scheme: str, relu6: str, adaround: bool):
    bar = st.progress(0.0, text="Repairing…")
    try:
        return repair_view(model, scheme, relu6, adaround=adaround,
                           progress=lambda f, m: bar.progress(max(0.0, min(1.0, f)), text=m))
    finally:
        bar.empty()


def repairs_page() -> None:
    require_router()
    st.title("Repairs: making per-tensor work")
    model = get_param("model", zoo_names(), DEFAULT_MODEL) or DEFAULT_MODEL
    with st.container(key="repairs_block"):
        repairs_section(model)


def repairs_section(model: str) -> None:
    """The choices, the button, then the table, the picture and equalize's summary."""
    cols = st.columns(3)
    scheme = select_param("Scheme", "repair_scheme", scheme_names(), "per_tensor_symmetric", where=cols[0])
    relu6 = select_param("ReLU6", "repair_relu6", list(RELU6), "bounded", where=cols[1],
                         help="keep: ReLU6 ends a pair; bounded: scales kept within what ReLU6 leaves "
                              "unclipped on the calibration data; replace: ReLU6 becomes ReLU (DFQ)")
    adaround = cols[2].toggle("Include AdaRound", key="repair_adaround", help="300 iterations per layer")
    st.markdown(f"Model **{model}**, scheme **{scheme}**: the plain calibration beside "
                "`qcal.equalize`, `qcal.correct_bias` and their chain (and `qcal.adaround` if asked), "
                "on 300 held-out samples.")
    ran = st.session_state.setdefault("repairs_ran", set())  # stay shown while other widgets change
    if st.button("Run the repairs", key="repair_run", type="primary"):
        ran.add((model, scheme, relu6, adaround))
    if (model, scheme, relu6, adaround) not in ran:
        return
    view = _view(model, scheme, relu6, adaround)
    show_table(view.table, key="repair_table")
    layers = list(dict.fromkeys(view.ranges["layer"])) if not view.ranges.empty else []
    if layers:
        layer = select_param("Layer", "layer", layers)
        st.plotly_chart(weight_range_change_figure(view.ranges, layer), key="repair_ranges")
    st.code(view.summary, language=None)


repairs_page()
