"""Requant math: one output element from int8 inputs to the final int8 value, step by step."""

from typing import Any

import streamlit as st

from pages._onnx import onnx_download, onnx_file
from pages._shared import current_run, layer_trace, quantized_model, run_caption
from pages._state import fail, require_router, select_param
from qcal.int8.cpu.report import format_cpu_report
from qcal.reporting import worked_example as we


def _pick_model(run: Any) -> tuple[Any, str, str]:
    """Scheme and backend widgets, then the live QuantizedModel (the page stops without one)."""
    summary = run.frames["summary"]
    left, right = st.columns(2)
    scheme = select_param("Scheme", "scheme", list(dict.fromkeys(summary["scheme"])), where=left)
    backend = select_param("Backend", "backend",
                           list(summary.loc[summary["scheme"] == scheme, "backend"]), where=right)
    qm = quantized_model(run, scheme, backend)
    if qm is None:
        st.info(f"This view needs live tensors, and model **{run.model}** cannot be loaded here "
                "(the run was imported, or made with a model neither in the zoo nor registered). The "
                "stored scales are on the Scales page; recompute the run where its model lives "
                "to see the worked example.")
        st.stop()
    st.caption(f"Recomputed live from model {run.model} (same data, same scheme, same qparams "
               "as the stored run).")
    return qm, scheme, backend


def _pick_element(run: Any, qm: Any, scheme: str, backend: str) -> tuple[str, Any, tuple[int, ...]]:
    """Layer, sample and element widgets; returns (layer name, its trace, the element index)."""
    layer_name = select_param("Layer", "layer", list(qm.quant_layers))
    layer = qm.quant_layers[layer_name]
    a, b, c, d = st.columns(4)
    sample = a.number_input("Input sample", 0, 31, 0, key="requant_sample")
    trace = layer_trace(run, scheme, backend, int(sample))[layer_name]
    channels, rows, cols = we.element_grid(tuple(trace.output_q.shape), layer.kind)
    # per-layer keys: each layer keeps its own element, starting at the output's centre
    channel = b.number_input("Output channel", 0, channels - 1, 0, key=f"channel_{layer_name}")
    row = c.number_input("Row" if layer.kind == "conv" else "Row (token)", 0, rows - 1, rows // 2,
                         key=f"row_{layer_name}") if rows > 1 else 0
    col = d.number_input("Column", 0, cols - 1, cols // 2, key=f"col_{layer_name}") if cols > 1 else 0
    try:
        index = we.element_index(tuple(trace.output_q.shape), layer.kind, int(channel), int(row), int(col))
    except ValueError as err:
        fail(f"{err}. Pick a channel, row and column inside the layer's output.")
    return layer_name, trace, index


def _draw_scales(r: we.ElementReport, layer: Any) -> None:
    st.subheader(f"{r.layer}: scales and zero points")
    ch, rq = r.channel_numbers, r.requant
    top = st.columns(4)
    top[0].metric("input scale", f"{ch['input_scale']:.7g}")
    top[1].metric("input zero point", layer.input_zero_point)
    top[2].metric("output scale", f"{ch['output_scale']:.7g}")
    top[3].metric("output zero point", layer.output_zero_point)
    mid = st.columns(4)
    mid[0].metric(f"weight scale (channel {r.channel})", f"{ch['weight_scale']:.7g}")
    mid[1].metric("weight zero point", int(ch["weight_zero_point"]))
    mid[2].metric("requant scale", f"{ch['requant_scale']:.7g}",
                  help=f"input_scale · weight_scale / output_scale in float64: {ch['requant_scale']:.12g}")
    mid[3].metric(f"{r.backend} multiplier", f"{rq['multiplier']:.7g}",
                  help=f"float32, exactly as {r.backend} computes it: {rq['multiplier']:.9g}")
    low = st.columns(4)
    low[0].metric("Q31 multiplier", f"{rq['q31_multiplier']}",
                  help=f"{r.backend}'s multiplier in gemmlowp/TFLite fixed point: "
                       "M ≈ q · 2^(shift−31), q in [2^30, 2^31)")
    low[1].metric("Q31 shift", f"{rq['q31_shift']}")
    low[2].metric("TFLite q / shift", f"{int(ch['q31_multiplier'])} / {int(ch['q31_shift'])}",
                  help="what TFLite/gemmlowp derive from the float64 requant scale (the q31 flavour)")
    low[3].metric("bias in accumulator units", rq["bias_int32"] if rq["bias_int32"] is not None
                  else "kept in float" if layer.bias is not None else "no bias")
    st.markdown("Every backend starts from the same real number `requant_scale`; they differ in "
                "how they round it (float32 divide vs. reciprocal multiply vs. a 31-bit integer "
                "and a shift) and where the bias and zero point enter. Per output channel:")
    st.dataframe(r.table, hide_index=True, key="requant_table", height=220,
                 column_config={c: st.column_config.NumberColumn(format="%.9g")
                                for c in r.table.columns if c.endswith(("scale", "multiplier"))})


def _draw_steps(r: we.ElementReport) -> None:
    st.subheader(f"Output element {r.index[1:]} on {r.backend}")
    with st.container(key="steps_block"):
        st.dataframe(r.steps, hide_index=True, key="requant_steps")
    r1, r2, r3 = st.columns(3)
    r1.metric("worked steps", r.worked)
    r2.metric("qcal integer engine", r.engine)
    r3.metric(f"torch {r.backend} engine" if r.reference is not None else "torch engine",
              r.reference if r.reference is not None else "n/a",
              help="torch.ops.quantized under this engine, same int8 inputs and weights"
              if r.reference is not None else f"torch has no {r.backend} engine; ONNX/Q31 are "
              "reproduced from their reference arithmetic")
    if r.agrees:
        st.success(r.verdict)
    else:
        st.warning(r.verdict)


def _draw_saturation(r: we.ElementReport) -> None:
    st.subheader("FBGEMM's int16 pair saturation and why reduce_range exists")
    s = r.saturation
    p1, p2, p3 = st.columns(3)
    p1.metric("largest input code (as calibrated)", s["max_code_calibrated"])
    p2.metric("pairs that can saturate at code 255", f"{s['layer_pairs_can_saturate']} / {s['layer_pairs']}")
    p3.metric("saturated pairs with full-range inputs", s["layer_saturated_full_range"])
    st.markdown(
        "Without VNNI, FBGEMM multiplies raw uint8 activation codes by int8 weight codes and adds "
        "adjacent products in **int16 with saturation** (`vpmaddubsw`) before widening to int32. "
        "With codes ≤ 127 a pair is at most 2·127·128 = 32512 < 32767: it cannot saturate. With "
        "full-range codes (up to 255) a pair reaches 65280, the sum is clipped and the accumulator "
        f"is silently wrong. This scheme's activations use reduce_range={r.reduce_range}"
        f"{' (codes 0..127)' if r.reduce_range else ' (codes 0..255)'}; FBGEMM's default observer sets "
        "it to give up one bit of activation resolution for safety. qcal emulates an x86 CPU with "
        f"**{r.cpu}** (`QCAL_CPU` picks another): with AVX512-VNNI `vpdpbusd` does not saturate, "
        "except in FBGEMM's depthwise kernel, which still pairs taps; AVX-VNNI without AVX-512 "
        "runs the saturating AVX2 kernels. Below, this element's pairs in im2col (kh, kw, c) "
        f"order; {s['element_pairs_can_saturate']} of {s['element_pairs']} could saturate with "
        "inputs at 255 where both weights share a sign.")
    st.dataframe(r.pairs, hide_index=True, key="pairs_table", height=260)
    with st.expander("This machine, what qcal emulates for each backend, and what was checked (`qcal cpu`)"):
        st.code(format_cpu_report(), language=None, wrap_lines=True)


def _draw_beside(qm, layer_name: str, trace, index) -> None:
    st.subheader("The same accumulator on fbgemm, qnnpack and ort")
    st.dataframe(we.requant_beside(qm.quant_layers[layer_name], trace, index), hide_index=True,
                 key="requant_beside")
    st.caption("ort is onnxruntime's CPU arithmetic (MLAS): an int32 bias and the zero point after "
               "rounding like QNNPACK, the multiplier divided like FBGEMM; without VNNI its U8S8 "
               "kernels saturate int16 pairs like FBGEMM's.")


def _draw_download(run, scheme: str, backend: str) -> None:
    try:
        data = onnx_file(run, scheme, backend)
    except Exception as err:  # an export refusal or onnx's checker: the rest of the page still stands
        st.caption(f"No ONNX export for this model: {type(err).__name__}: {err}")
        return
    if data is None:
        st.caption("No ONNX export here: the model is not loadable or runs in module-swap mode.")
        return
    onnx_download(run.model, scheme, data, key="onnx_download")


def requant_page() -> None:
    require_router()
    st.title("Requantization, step by step")
    run = current_run()
    st.caption(run_caption(run))
    qm, scheme, backend = _pick_model(run)
    layer_name, trace, index = _pick_element(run, qm, scheme, backend)
    report = we.element_report(qm, layer_name, trace, index, backend)
    _draw_scales(report, qm.quant_layers[layer_name])
    _draw_steps(report)
    _draw_beside(qm, layer_name, trace, index)
    _draw_download(run, scheme, backend)
    _draw_saturation(report)


requant_page()
