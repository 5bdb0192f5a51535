"""Compare: accuracy, size and the worst layers of every scheme on every backend."""

import streamlit as st

from pages._onnx import onnx_download, recipe_onnx_data, scheme_onnx_data
from pages._shared import (
    BACKEND_CHOICES,
    DEFAULT_BACKENDS,
    REPAIR_CHAINS,
    built_schemes,
    calib_samples_param,
    current_run,
    run_caption,
    run_figure,
    saved_run_id,
    scheme_names,
    set_built_schemes,
)
from pages._state import (
    memory,
    multiselect_param,
    require_router,
    select_param,
    set_param,
    show_table,
)
from pages._store import recipes_beside_presets
from qcal.reporting import views
from qcal.reporting.story import grouped_caveats, lead_sentence
from qcal.scheme_text import build_scheme, format_scheme
from qcal.schemes import DTYPES, OBSERVERS, QSCHEMES


def scheme_builder() -> None:
    """Build a scheme with the CLI's names; it joins the comparison through the URL."""
    with st.expander("Build a scheme (any observer, dtype, reduce_range)"):
        w, a, o = st.columns(3)
        w.markdown("**Weights**")
        wq = w.selectbox("weight qscheme", QSCHEMES, index=3, key="build_w_qscheme")
        wo = w.selectbox("weight observer", [x for x in OBSERVERS if x != "histogram" or "tensor" in wq],
                         key="build_w_observer")
        wd = w.selectbox("weight dtype", DTYPES, index=1, key="build_w_dtype")
        a.markdown("**Activations**")
        aq = a.selectbox("activation qscheme", [q for q in QSCHEMES if "tensor" in q], key="build_a_qscheme")
        ao = a.selectbox("activation observer", OBSERVERS, key="build_a_observer")
        ad = a.selectbox("activation dtype", DTYPES, key="build_a_dtype")
        ar = a.checkbox("activation reduce_range", True, key="build_a_reduce_range")
        p = o.number_input("percentile p", 50.01, 100.0, 99.99, step=0.01, format="%.4f", key="build_percentile")
        bins = o.number_input("histogram bins (2048: the default)", 2, 8192, 2048, key="build_bins")
        name = o.text_input("name", "", key="build_name", placeholder="(its text)")
        if st.button("Add to the comparison", key="build_add"):
            try:
                scheme = build_scheme(name, {"qscheme": wq, "observer": wo, "dtype": wd},
                                      {"qscheme": aq, "observer": ao, "dtype": ad, "reduce_range": ar},
                                      percentile=float(p), bins=None if int(bins) == 2048 else int(bins))
            except ValueError as err:
                st.error(f"{err}")
                return
            texts = {**built_schemes(), scheme.name: format_scheme(scheme)}
            set_built_schemes(list(texts.values()))
            chosen = (st.query_params.get("schemes") or memory().get("schemes") or "").split(",")
            set_param("schemes", ",".join(dict.fromkeys([c for c in chosen if c] + [scheme.name])))
            st.rerun()
        built = built_schemes()
        if built:
            st.caption("Built (in the URL; `qcal compare --scheme TEXT` takes the same text):")
            st.code("\n".join(built.values()), language=None)


def calibration_size() -> None:
    """How many calibration samples the live comparison uses (a new comparison; saved runs stay)."""
    current = calib_samples_param() or 0
    n = st.number_input("Calibration samples (0: the whole calibration set)", 0, 100000, current,
                        key="calib_samples", help="The first N calibration samples; a new "
                        "comparison is computed and saved, earlier runs are never changed.")
    set_param("calib", str(int(n)) if n else None)


def onnx_downloads(run, scheme: str, backend: str, table) -> None:
    """A download of the ONNX file of the picked scheme, and of any saved recipe of the model."""
    st.subheader("Ship to ONNX Runtime")
    left, right = st.columns(2)
    data = scheme_onnx_data(run, scheme, backend)
    if data is None:
        left.caption("No ONNX file for this scheme here: the run's model cannot be loaded.")
    else:
        onnx_download(run.model, scheme, data, key="onnx_download", where=left)
    saved = table[table["kind"] == "recipe"].drop_duplicates(["run_id", "scheme"])
    if not saved.empty and run.loadable:
        choices = {f"{r.scheme} (run {r.run_id})": (r.run_id, r.scheme) for r in saved.itertuples()}
        run_id, name = choices[right.selectbox("Saved recipe", list(choices), key="onnx_recipe")]
        onnx_download(run.model, name, recipe_onnx_data(run.model, run_id, name), key="onnx_download_recipe",
                      where=right)
    st.caption("The file is written on the click (the scheme's calibration, once). `qm.with_backend('ort')` "
               "predicts onnxruntime's output for it bit for bit; onnxruntime quantizes a recipe's fp32 "
               "layer itself when it sits between two int8 layers.")


def compare_page() -> None:
    require_router()
    st.title("Compare schemes and backends")
    run = current_run() if saved_run_id() else None
    if run is None:  # the live comparison: its setup is chosen here
        with st.container(border=True):
            left, mid, right = st.columns([1, 2, 1])
            left.selectbox("Data", ["the model's own"], key="data",
                           help="Zoo models are trained and scored on the bundled digits; "
                                "registered models on their registry's calibration and eval files.")
            names = [*scheme_names(), *built_schemes()]
            multiselect_param("Schemes", "schemes", names, names, where=mid)
            multiselect_param("Backends", "backends", BACKEND_CHOICES, DEFAULT_BACKENDS, where=right)
            multiselect_param("Repairs (each adds a `scheme + repair` column per scheme)", "repairs",
                              REPAIR_CHAINS, [], where=mid,
                              help="Cross-layer equalization (data-free) and bias correction, applied to the "
                                   "float model before calibration (qcal.apply_recipe); see the Repairs page.")
            calibration_size()
            scheme_builder()
        run = current_run()
    st.caption(run_caption(run))
    with st.container(key="lead"):
        st.markdown(f"**{lead_sentence(run.frames['summary'])}**")
    if run.meta.get("repairs"):
        st.caption("Repaired columns (`qcal.apply_recipe` recomputes each from these settings): "
                   + views.repairs_caption(run.meta))
    for note, jobs in grouped_caveats(run.meta.get("notes")):  # one box per distinct caveat
        st.warning(f"**{', '.join(jobs)}**: {note}", icon=":material/info:")

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

    st.subheader("Saved recipes beside the presets")
    table = recipes_beside_presets(run.model, summary, run.run_id, run.meta.get("data_description", ""))
    if (table["kind"] == "recipe").any():
        show_table(table, key="recipes_table")
        st.caption("Recipes come from their own saved runs: compare numbers on the same data "
                   "(see data_description).")
    else:
        st.caption("No saved recipe for this model yet: build one on the Sensitivity page.")
    onnx_downloads(run, scheme, backend, table)


compare_page()
