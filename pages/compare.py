"""Compare: accuracy, size and the worst layers of every scheme on every backend."""

import streamlit as st

from pages._shared import (
    BACKEND_CHOICES,
    DEFAULT_BACKENDS,
    current_run,
    run_caption,
    run_figure,
    saved_run_id,
    scheme_names,
)
from pages._state import multiselect_param, require_router, select_param, show_table
from qcal.reporting import views


def compare_page() -> None:
    require_router()
    st.title("Compare schemes and backends")
    run = current_run() if saved_run_id() else None
    if run is None:  # the live comparison: its setup is chosen here
        with st.container(border=True):
            left, mid, right = st.columns([1, 2, 1])
            left.selectbox("Data", ["digits (scikit-learn, bundled)"], key="data",
                           help="The zoo models are trained and scored on the bundled digits.")
            multiselect_param("Schemes", "schemes", scheme_names(), scheme_names(), where=mid)
            multiselect_param("Backends", "backends", BACKEND_CHOICES, DEFAULT_BACKENDS, where=right)
        run = current_run()
    st.caption(run_caption(run))
    for job, notes in (run.meta.get("notes") or {}).items():
        for note in notes:
            st.warning(f"**{job}**: {note}", icon=":material/info:")

    summary, layers = run.frames["summary"], run.frames["layers"]
    schemes = list(dict.fromkeys(summary["scheme"]))
    left, right = st.columns(2)
    scheme = select_param("Scheme", "scheme", schemes, where=left)
    backends = list(summary.loc[summary["scheme"] == scheme, "backend"])
    backend = select_param("Backend", "backend", backends, where=right)
    row = views.metric_value(summary, scheme, backend)
    a, b, c, d = st.columns(4)
    a.metric(f"int8 {row['metric']}", f"{row['value']:.2%}", f"{-row['drop']:+.2%} vs fp32")
    b.metric(f"fp32 {row['metric']}", f"{row['fp32_value']:.2%}")
    c.metric("output cosine", f"{row['cosine']:.4f}")
    d.metric("int8 size", f"{row['int8_bytes'] / 1024:.1f} KiB")

    st.subheader(f"Top-1 {row['metric']} per scheme and backend")
    st.plotly_chart(run_figure(run.run_id, "accuracy"), key="accuracy_chart")
    st.markdown(views.accuracy_sentence(summary))

    st.subheader("Size")
    fp32_bytes = run.meta.get("fp32_bytes")
    sizes = views.size_table(summary, fp32_bytes)
    st.bar_chart(sizes, x="scheme", y="int8_kib", y_label="int8 KiB", horizontal=True)
    st.markdown(views.size_sentence(sizes, fp32_bytes))

    st.subheader("Worst layers per scheme")
    st.dataframe(views.worst_layers_table(layers, 3), hide_index=True, key="worst_layers")
    st.markdown(views.worst_layers_sentence(layers))

    with st.expander("Full summary table"):
        show_table(summary, key="summary_table")


compare_page()
