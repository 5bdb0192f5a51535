"""qcal dashboard: the router and the frame.

``streamlit run dashboard.py`` opens on a built-in model (computed once, with a progress bar,
then cached and stored). The shared selection (model, run, scheme, backend, layer) lives in
the URL's query parameters, so a copied link reopens the same view.
"""

import logging

import streamlit as st

from pages._shared import DEFAULT_MODEL, model_catalogue, saved_run_id
from pages._state import fail, select_param, set_param

st.set_page_config(page_title="qcal", page_icon=":material/calculate:", layout="wide")

PAGES = [
    st.Page("pages/compare.py", title="Compare", icon=":material/leaderboard:", default=True),
    st.Page("pages/scales.py", title="Scales", icon=":material/straighten:"),
    st.Page("pages/layers.py", title="Layers", icon=":material/layers:"),
    st.Page("pages/sensitivity.py", title="Sensitivity", icon=":material/tune:"),
    st.Page("pages/repairs.py", title="Repairs", icon=":material/build:"),
    st.Page("pages/silicon.py", title="Simulation vs silicon", icon=":material/memory:"),
    st.Page("pages/requant.py", title="Requant math", icon=":material/functions:"),
    st.Page("pages/explain.py", title="Explain a checkpoint", icon=":material/description:"),
    st.Page("pages/runs.py", title="Runs", icon=":material/history:"),
]
page = st.navigation(PAGES)

with st.sidebar:
    st.markdown("### qcal")
    saved = saved_run_id()
    if saved:
        st.caption(f"Showing saved run `{saved}`.")
        if st.button("Back to the live comparison", key="leave_run"):
            set_param("run", None)
            st.rerun()
    else:
        try:
            models, problems = model_catalogue()
        except Exception as err:
            models, problems = [], []
            st.warning(f"The model zoo is unavailable: {err}")
        select_param("Model", "model", models, DEFAULT_MODEL, where=st.sidebar,
                     help="A built-in model (trained once on the bundled digits data) or one "
                          "of your team's registered models (QCAL_MODELS).")
        for problem in problems:  # named here; the other models stay usable
            st.warning(f"Registered model not available: {problem}", icon=":material/warning:")
    st.caption("The URL holds your selection: copy it to share this view.")

try:
    page.run()
except st.errors.StreamlitAPIException:
    raise  # misuse of Streamlit itself: let AppTest and the developer see it
except Exception as err:  # a page failure shows what to do, not a traceback
    logging.getLogger("qcal.dashboard").exception("page %s failed", page.title)
    fail(f"This page failed: {type(err).__name__}: {err}. Try another selection or reload; "
         "if it persists, report it with the URL of this view.")
