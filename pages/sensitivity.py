"""Sensitivity: which layer costs the accuracy, the fp32-fallback curve, and a recipe builder."""

import streamlit as st

from pages import _scan as sens
from pages._shared import DEFAULT_MODEL, scheme_names, zoo_names
from pages._state import (
    get_param,
    multiselect_param,
    require_router,
    select_param,
    set_param,
    show_table,
)
from qcal.recipes import FP32
from qcal.reporting.sensitivity_figures import fallback_figure, heatmap_figure
from qcal.schemes import BACKENDS

EVAL_CHOICES = ("50", "100", "200", "300")  # held-out samples: 100 keeps a scan to about a minute on 2 cores
DEFAULT_SCHEMES = ("per_tensor_affine", "per_channel_symmetric")


def _bar(text: str):
    bar = st.progress(0.0, text=text)
    return bar, lambda f, m: bar.progress(max(0.0, min(1.0, f)), text=f"{text} {m}")


def scan_section(model: str, backend: str, evals: int):
    """The heatmap (computed on the button, then cached); returns (rows, schemes) or None."""
    schemes = tuple(multiselect_param("Schemes to scan", "sens_schemes", scheme_names(), DEFAULT_SCHEMES))
    if not schemes:
        st.info("Pick at least one scheme to scan.")
        return None
    rows = sens.scanned(model, schemes, backend, evals)
    if rows is None:
        st.markdown(f"The scan evaluates every layer alone int8 and alone fp32 under each scheme "
                    f"({len(schemes)} calibration passes, on {evals} held-out samples).")
        if not st.button("Scan layer sensitivity", key="sens_scan", type="primary"):
            return None
        bar, report = _bar(f"Scanning {model}…")
        rows = sens.scan(model, schemes, backend, evals, report)
        bar.empty()
    st.subheader("Drop when only that layer is int8")
    st.plotly_chart(heatmap_figure(sens.heatmap(rows)), key="sens_heatmap")
    with st.expander("Every row (only / all but one layer)"):
        show_table(rows.drop(columns="recipe"), key="sens_rows")
    return rows, schemes


def fallback_section(model: str, backend: str, evals: int, rows, schemes) -> None:
    """The fp32-fallback curve of one scheme."""
    st.subheader("fp32 fallback")
    scheme = select_param("Scheme for the fallback curve", "scheme", list(schemes))
    order = sens.order_of(rows, scheme)
    bar, report = _bar("Returning layers to fp32…")
    curve = sens.curve(model, scheme, backend, evals, order, report)
    bar.empty()
    st.plotly_chart(fallback_figure(curve), key="sens_fallback")
    show_table(curve.drop(columns="recipe"), key="sens_curve")


def builder_section(model: str, backend: str, evals: int, layers: list[str]) -> None:
    """Pick a scheme or fp32 per layer; see its accuracy and SQNR; save it; download it."""
    st.subheader("Build a recipe")
    choices = [*scheme_names(), FP32]
    default = select_param("Default for every layer", "recipe_default", choices, DEFAULT_SCHEMES[0])
    picked = dict(p.split("=", 1) for p in (st.query_params.get("recipe") or "").split(",") if "=" in p)
    cols = st.columns(3)
    layers_choice = {}
    for i, layer in enumerate(layers):
        current = picked.get(layer, default)
        value = cols[i % 3].selectbox(layer, choices, index=choices.index(current) if current in choices else 0,
                                      key=f"recipe_layer_{layer}")
        if value != default:
            layers_choice[layer] = value
    set_param("recipe", ",".join(f"{k}={v}" for k, v in layers_choice.items()) or None)
    recipe = sens.recipe_json(None if default == FP32 else default,
                              {k: None if v == FP32 else v for k, v in layers_choice.items()})
    cmp = sens.recipe_run(model, recipe, backend, evals)
    row = cmp.summary.iloc[0]
    a, b, c = st.columns(3)
    a.metric(f"recipe {row['metric']}", f"{row['value']:.2%}", f"{-row['drop']:+.2%} vs fp32")
    b.metric(f"fp32 {row['metric']}", f"{row['fp32_value']:.2%}")
    c.metric("int8 size", f"{row['int8_bytes'] / 1024:.1f} KiB")
    show_table(sens.recipe_layers(cmp, recipe, layers), key="recipe_layers")
    toml, code = sens.files(recipe, backend)
    left, mid, right = st.columns(3)
    if left.button("Save as a run", key="recipe_save"):
        st.session_state["recipe_saved"] = sens.save(cmp)
    if st.session_state.get("recipe_saved"):
        left.success(f"Saved as run `{st.session_state['recipe_saved']}` (see the Runs page).")
    mid.download_button("Download the recipe (TOML)", toml, "recipe.toml", key="recipe_toml")
    right.download_button("Download torch QConfigMapping code", code, "qconfig_mapping.py", key="recipe_code")
    with st.expander("torch QConfigMapping code"):
        st.code(code, language="python")


def sensitivity_page() -> None:
    require_router()
    st.title("Layer sensitivity")
    model = get_param("model", zoo_names(), DEFAULT_MODEL)
    with st.container(key="sens_block"):
        left, right = st.columns(2)
        backend = select_param("Backend", "backend", list(BACKENDS), "fbgemm", where=left)
        evals = int(select_param("Eval samples", "sens_eval", EVAL_CHOICES, "100", where=right))
        st.caption(f"model **{model}** · backend {backend} · {evals} held-out samples")
        scanned = scan_section(model, backend, evals)
    if scanned is None:
        return
    rows, schemes = scanned
    fallback_section(model, backend, evals, rows, schemes)
    builder_section(model, backend, evals, list(dict.fromkeys(rows["layer"])))


sensitivity_page()
