"""Explain a checkpoint: every scale and zero point of a quantized state_dict, entry by entry."""

import streamlit as st

from pages._shared import explain_bytes, explain_example
from pages._state import fail, require_router
from qcal.reporting import views

SOURCES = {"example": "the bundled example", "upload": "a file of mine"}


def explain_page() -> None:
    require_router()
    st.title("Explain a quantized checkpoint")
    st.markdown("A quantized `state_dict` stores numbers without saying which is which. This page "
                "reads one as data (`torch.load(weights_only=True)`: a file can never run code) "
                "and says, entry by entry, what each scale and zero point is.")
    source = st.radio("Checkpoint", list(SOURCES), format_func=SOURCES.get, horizontal=True,
                      key="explain_source")
    if source == "example":
        backend = st.selectbox("Example quantized with", ["fbgemm", "qnnpack"], key="explain_backend",
                               help="A small digits CNN (its first layer is conv_3x3_32a) calibrated "
                                    "with torch's default qconfig for this engine and converted "
                                    "in eager mode (scripts/make_example_checkpoint.py).")
        name = f"example ({backend})"
        try:
            table = explain_example(backend)
        except Exception as err:  # the example is built on first use: anything can fail there
            fail(f"The bundled example is not available ({type(err).__name__}: {err}).")
    else:
        upload = st.file_uploader("A quantized model's state_dict (.pt / .pth)", type=["pt", "pth"],
                                  key="explain_upload")
        if upload is None:
            st.info("Upload a `.pt`/`.pth` file saved with `torch.save(model.state_dict(), path)` "
                    "after torch's convert step, or pick the bundled example.")
            st.stop()
        name = upload.name
        try:
            table = explain_bytes(upload.getvalue(), upload.name)
        except ValueError as err:
            fail(f"{name} could not be explained: {err}. Upload a state_dict saved with "
                 "`torch.save(model.state_dict(), ...)` from a model after torch's quantization "
                 "convert step.")

    layers = table["layer"].nunique() if "layer" in table else 0
    st.subheader(f"{name}: {len(table)} entries in {layers} layers")
    with st.container(key="explain_block"):
        picked = st.dataframe(views.explain_view(table), hide_index=True, key="explain_table",
                              on_select="rerun", selection_mode="single-row",
                              column_config={"note": st.column_config.TextColumn(width="large")})
    rows = picked.selection.rows if picked else []
    entry = table.iloc[rows[0] if rows else 0]
    with st.expander(f"Entry `{entry['key']}` in full (click a row above to pick another)",
                     expanded=bool(rows)):
        st.markdown(entry["note"])
        st.json({c: entry[c] for c in ("scale", "zero_point", "requant_scale")
                 if isinstance(entry[c], list) and entry[c]},
                expanded=False)
    _draw_glossary()



def _draw_glossary() -> None:
    st.markdown(
        "- **weight scale / zero point** (`<layer>.weight`, stored inside the quantized weight "
        "tensor): how the int8 weights map back to floats, one pair per output channel for "
        "per-channel schemes.\n"
        "- **output scale / zero point** (`<layer>.scale`, `<layer>.zero_point`): the layer's "
        "*output activation* qparams, chosen by the activation observer during calibration; "
        "the next layer's input uses them.\n"
        "- **Why a weight zero point is 0:** torch's default weight observers are *symmetric*; "
        "symmetric qint8 has zero point 0 by construction (zero maps to 0). The tensor is still "
        "stored as 'affine' with zero points 0: symmetric is how the qparams were chosen, not a "
        "different storage format. A 0 also keeps the integer kernel cheap (no weight-offset term).\n"
        "- **requant scale** = input scale × weight scale / output scale, per output channel: "
        "the one multiplier that turns the int32 accumulator into the next int8 value. It is "
        "filled in where the input scale is known (the previous layer's output, or the "
        "model's input quantizer).")


explain_page()
