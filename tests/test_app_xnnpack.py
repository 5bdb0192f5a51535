"""The XNNPACK presets in the dashboard's scheme pickers: the Layers and Requant pages on backend xnnpack."""

from __future__ import annotations

from test_app import _store, app, assert_clean  # noqa: F401 (_store: a session store, not data/)


def test_xnnpack_presets_render_on_the_layers_and_requant_pages():
    at = app("layers", scheme="xnnpack_default", backend="xnnpack", layer="conv_3x3_64")
    assert_clean(at)
    assert at.selectbox(key="param_scheme").value == "xnnpack_default"
    at = app("requant", scheme="xnnpack_per_tensor", backend="xnnpack", layer="fc2")
    assert_clean(at)
    assert any("by the delegate" in str(d.value.to_dict()) for d in at.dataframe)
