"""Runs: the saved runs of the store; open, share, export, report, delete, import."""

import streamlit as st

from pages._state import fail, require_router, select_param, set_param
from pages._store import (
    delete_run,
    export_run_bytes,
    import_run_bytes,
    list_runs,
    report_bytes,
    share_link,
    store_location,
)
from qcal.store import StoreError


def runs_page() -> None:
    require_router()
    st.title("Saved runs")
    try:
        st.caption(f"Store: `{store_location()}` (set `QCAL_STORE` to a path or `sqlite:///` URL).")
        runs = list_runs()
    except StoreError as err:
        fail(f"The run store cannot be read: {err}. Check that QCAL_STORE points to a writable "
             "SQLite file.")

    with st.expander("Import a run file"):
        upload = st.file_uploader("A portable run file exported from qcal (SQLite)",
                                  type=["sqlite", "db", "qcalrun"], key="import_upload")
        if upload is not None and st.button("Import", key="import_button"):
            try:
                new_id = import_run_bytes(upload.getvalue())
            except StoreError as err:
                st.error(f"Import failed: {err}. Only files written by qcal's Export are "
                         "accepted; they hold data only.")
            else:
                st.success(f"Imported run `{new_id}`.")
                runs = list_runs()

    if runs.empty:
        st.info("No saved runs yet. The Compare page saves one the first time it computes a "
                "comparison; `python -m qcal compare` saves one from the command line.")
        st.stop()

    with st.container(key="runs_block"):
        st.dataframe(runs, hide_index=True, key="runs_table")
    ids = [str(i) for i in runs["id"]]
    labels = {str(r["id"]): " · ".join(str(r[c]) for c in ("id", "model", "created") if c in r)
              for _, r in runs.iterrows()}
    run_id = select_param("Run", "pick", ids, where=st, format_func=lambda i: labels.get(i, i))

    st.subheader(f"Run `{run_id}`")
    open_col, export_col, report_col, delete_col = st.columns(4)
    if open_col.button("Open in the other pages", key="open_run", type="primary"):
        set_param("run", run_id)
        st.switch_page("pages/compare.py", query_params={"run": run_id})
    export_col.download_button("Export portable file", lambda: export_run_bytes(run_id),
                               file_name=f"qcal-run-{run_id}.sqlite",
                               mime="application/vnd.sqlite3", key="export_run", on_click="ignore")
    report_col.download_button("HTML report", lambda: report_bytes(run_id),
                               file_name=f"qcal-report-{run_id}.html", mime="text/html",
                               key="report_run", on_click="ignore")
    confirm = delete_col.checkbox("Confirm delete", key="confirm_delete")
    clicked = delete_col.button("Delete", key="delete_run", disabled=not confirm)
    if clicked:
        delete_run(run_id)
        if st.query_params.get("run") == run_id:
            set_param("run", None)
        set_param("pick", None)
        st.session_state.pop("confirm_delete", None)
        st.rerun()

    st.markdown("**Share link** (opens this run's Compare page for anyone on this server):")
    st.code(share_link(run_id), language=None)


runs_page()
