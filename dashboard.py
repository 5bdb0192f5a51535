"""qcal dashboard: the router and the frame (placeholder until the dashboard issue lands)."""

import streamlit as st

st.set_page_config(page_title="qcal", layout="wide")
st.navigation([st.Page("pages/home.py", title="Home", icon=":material/home:")]).run()
