"""Layers: per-layer SQNR / MSE / cosine for every scheme, and one layer's fp32-vs-int8 scatter."""

import streamlit as st

from pages._shared import current_run, run_caption, run_figure
from pages._state import require_router, select_param, set_param, show_table
from qcal.reporting import views

METRICS = {"sqnr_db": "SQNR (dB, higher is better)", "mse": "MSE (lower is better)",
           "cosine": "cosine similarity (1 is exact)"}


def layers_page() -> None:
    require_router()
    st.title("Per-layer error")
    run = current_run()
    st.caption(run_caption(run))
    layers, samples = run.frames["layers"], run.frames["samples"]
    if layers.empty:
        st.info("This run stores no per-layer errors.")
        st.stop()
    names = views.layer_names(layers)

    metric = st.radio("Metric", list(METRICS), format_func=METRICS.get, horizontal=True,
                      key="layer_metric")
    table = views.layer_table(layers, metric)
    st.plotly_chart(run_figure(run.run_id, "layer_error", metric), key="layer_error_chart")
    st.caption("Click a row (or pick a layer below) to see its outputs; click a column header "
               "to sort.")

    def _picked() -> None:
        rows = st.session_state["layer_table"].selection.rows
        if rows:
            set_param("layer", str(table["layer"].iloc[rows[0]]))  # the selectbox follows

    show_table(table, key="layer_table", on_select=_picked, selection_mode="single-row")

    layer = select_param("Layer", "layer", names)
    values = views.layer_values(layers, layer)
    worst = values.iloc[0]
    a, b, c = st.columns(3)
    a.metric(f"{layer}: worst SQNR", f"{worst['sqnr_db']:.2f} dB",
             help=f"{worst['scheme']} on {worst['backend']}")
    b.metric("its MSE", f"{worst['mse']:.3g}")
    c.metric("its cosine", f"{worst['cosine']:.5f}")
    show_table(values, key="layer_values")

    st.subheader(f"{layer}: fp32 vs int8 outputs")
    if samples.empty or layer not in set(samples["layer"]):
        st.info(f"This run stores no output samples for {layer}.")
        return
    scheme = select_param("Scheme", "scheme", list(dict.fromkeys(samples["scheme"])))
    st.plotly_chart(run_figure(run.run_id, "scatter", layer, scheme), key="scatter_chart")
    st.markdown("Points on the dotted diagonal are reproduced exactly; vertical spread is "
                "rounding noise (one output step wide at most), and flat runs at the ends are "
                "values clipped by the output range.")


layers_page()
