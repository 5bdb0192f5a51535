"""Scales: per-channel weight scales and zero points, weight ranges, activation clipping."""

import streamlit as st

from pages._shared import current_run, run_caption, run_figure
from pages._state import require_router, select_param, show_table
from qcal.reporting import views


def scales_page() -> None:
    require_router()
    st.title("Scales and zero points")
    run = current_run()
    st.caption(run_caption(run))
    scales, hists = run.frames["scales"], run.frames["histograms"]
    if scales.empty:
        st.info("This run stores no scale table.")
        st.stop()
    weights = scales[scales["tensor"] == "weight"]
    layer = select_param("Layer", "layer", views.layer_names(weights))
    schemes = list(dict.fromkeys(weights["scheme"]))

    spread = views.scale_spread(scales, layer)
    st.subheader(f"{layer}: per-channel weight scales, scheme by scheme")
    st.plotly_chart(run_figure(run.run_id, "scale", layer, "scale"), key="scale_chart")
    widest = spread.loc[spread["range_ratio"].idxmax()] if len(spread) else None
    if widest is not None:
        st.markdown(
            f"{layer} has {int(widest['channels'])} output channels whose absolute weight ranges "
            f"differ by **{widest['range_ratio']:.1f}×**. A per-tensor scheme gives all of them the "
            "widest channel's scale, so the narrowest channels use only a few of the 255 levels; "
            "per-channel schemes give each channel its own scale (the spread of the boxes).")
    show_table(spread, key="spread_table")

    st.subheader("Weight zero points")
    st.plotly_chart(run_figure(run.run_id, "scale", layer, "zero_point"), key="zero_point_chart")
    st.markdown("Symmetric weight schemes (and torch's default qconfigs) put every weight zero "
                "point at 0; only the affine schemes move it to fit a lopsided range.")

    st.subheader("Per-channel weight min/max")
    scheme = select_param("Scheme", "scheme", schemes)
    st.plotly_chart(run_figure(run.run_id, "weight_range", layer, scheme), key="range_chart")
    st.markdown("Each bar pair is one output channel's weight range; the dotted lines are the "
                "range a per-tensor scale must cover. Where most bars are far inside the dotted "
                "lines (typical of depthwise layers), per-tensor quantization wastes precision.")

    st.subheader("Activation histogram and each observer's clipping range")
    hist_layers = views.layer_names(hists)
    if not hist_layers:
        st.info("This run stores no activation histograms.")
        return
    act_layer = layer if layer in hist_layers else hist_layers[0]
    st.plotly_chart(run_figure(run.run_id, "histogram", act_layer), key="histogram_chart")
    show_table(views.clip_ranges(hists, act_layer), key="clip_table")
    st.markdown("Values outside an observer's dashed lines are clipped to the end of its range; a "
                "tighter range spends the 256 levels on the values that are common. minmax never "
                "clips, histogram/percentile/entropy/mse trade a little clipping for resolution.")


scales_page()
