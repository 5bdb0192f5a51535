"""Requant math: one output element from int8 inputs to the final int8 value, step by step."""

import streamlit as st

from pages._shared import current_run, run_caption


def requant_page() -> None:
    st.title("Requantization, step by step")
    run = current_run()
    st.caption(run_caption(run))
    st.info("The worked requantization example needs qcal's integer engine (qcal.int8) and "
            "live traces (QuantizedModel.trace), which are not available yet.")


requant_page()
