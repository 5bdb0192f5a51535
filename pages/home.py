"""Placeholder page: the real pages arrive with the dashboard issue."""

import streamlit as st

import qcal

st.title("qcal")
st.write("int8 post-training quantization, explained and compared bit for bit.")
st.dataframe(
    [{"scheme": s.name, "weight": s.weight.label(), "activation": s.activation.label()}
     for s in qcal.SCHEMES.values()],
)
