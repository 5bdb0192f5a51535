"""The pages' shared UI state: the router guard and the URL-backed selection.

Not a page (st.navigation lists only the page files). The selection every page shares
(model, run, scheme, backend, layer) lives in ``st.query_params`` so that a copied URL
reopens the same view; a session-state mirror keeps it when a navigation link drops the
query string. Widgets bound to it carry ``key="param_<name>"``.
"""

from __future__ import annotations

import runpy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st
from streamlit.runtime.pages_manager import PagesManager  # private: see require_router

from qcal.schemes import BACKENDS, SCHEMES

ROOT = Path(__file__).resolve().parent.parent
_MEMORY = "qcal_params"  # session-state dict mirroring the URL's query params


# ---------------------------------------------------------------- routing
def require_router() -> None:
    """Make sure this page runs inside dashboard.py's st.navigation frame.

    Streamlit 1.67 still treats a folder named ``pages/`` beside the entry script as a
    legacy (v1) multipage app until the entry script first calls ``st.navigation``: the very
    first session of a server that lands on a page URL (and every AppTest run) would run the
    page file alone, without the router and its sidebar. Here the router takes over in the
    same run (it routes back to this page), and the bare run stops.

    Streamlit 1.67 has no supported switch for this: the private class flag
    ``PagesManager.uses_pages_directory`` is set from ``(entry folder / "pages").exists()``
    and read by the script runner; only ``st.navigation`` clears it. This is the one place
    qcal touches it; tests/test_pages_router.py fails the day Streamlit changes it.
    """
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        runpy.run_path(str(ROOT / "dashboard.py"), run_name="__main__")
        st.stop()


# ---------------------------------------------------------------- URL-backed selection
def memory() -> dict[str, str]:
    """This session's mirror of the shared selection."""
    return st.session_state.setdefault(_MEMORY, {})


_CHECKED = ("model", "scheme", "schemes", "backend", "backends")  # names the URL must spell right


def _known(name: str) -> Sequence[str] | None:
    """Every name a URL parameter can hold anywhere (a page may offer fewer), None: unchecked."""
    return {"scheme": list(SCHEMES), "schemes": list(SCHEMES),
            "backend": list(BACKENDS), "backends": list(BACKENDS)}.get(name)


def _refuse_in_url(name: str, bad: Sequence[str], options: Sequence[str], shown: Sequence[str]) -> None:
    """Say once per session that the URL asked for names that do not exist, and what is shown.

    A real scheme or backend that this run or page does not offer falls back quietly (it is
    what navigating between runs and pages leaves in the URL); a misspelt one is named.
    """
    told = st.session_state.setdefault("qcal_url_refused", set())
    known = _known(name)
    bad = [b for b in bad if known is None or b not in known]
    if name not in _CHECKED or not bad or (name, tuple(bad)) in told:
        return
    told.add((name, tuple(bad)))
    st.error(f"The URL asks for {name} {', '.join(map(repr, bad))}, which "
             f"{'is' if len(bad) == 1 else 'are'} not available here; valid: "
             f"{', '.join(options) or '(none)'}. Showing {', '.join(shown) or 'nothing'} instead.")


def get_param(name: str, options: Sequence[str], default: str | None = None) -> str | None:
    """The value of a shared selection: the URL's, else this session's last, else default.

    Values are validated against ``options``; an unknown model, scheme or backend in the URL
    is named in an error box (the page goes on with the fallback), other names fall back quietly.
    """
    chosen = options[0] if options else None
    for candidate in (st.query_params.get(name), memory().get(name), default):
        if candidate is not None and candidate in options:
            chosen = candidate
            break
    url = st.query_params.get(name)
    if url is not None and url not in options:
        _refuse_in_url(name, [url], options, [chosen] if chosen else [])
    return chosen


def set_param(name: str, value: str | None) -> None:
    """Write a shared selection to the URL and this session's memory (None removes it)."""
    if value is None:
        memory().pop(name, None)
        if name in st.query_params:
            del st.query_params[name]
        return
    memory()[name] = value
    if st.query_params.get(name) != value:
        st.query_params[name] = value


def get_list_param(name: str, options: Sequence[str], default: Sequence[str]) -> list[str]:
    """A comma-separated shared selection, validated item by item."""
    raw = st.query_params.get(name) or memory().get(name)
    items = [s for s in raw.split(",") if s in options] if raw else []
    chosen = items or [s for s in default if s in options]
    url = st.query_params.get(name) or ""
    _refuse_in_url(name, [s for s in url.split(",") if s and s not in options], options, chosen)
    return chosen


def select_param(label: str, name: str, options: Sequence[str], default: str | None = None,
                 *, where: Any = None, format_func: Callable[[str], str] = str,
                 help: str | None = None) -> str | None:
    """A selectbox whose value is the shared selection ``name`` (URL query parameter)."""
    options = list(options)
    if not options:
        return None
    where = where or st
    key = f"param_{name}"
    # The shared value wins over any widget state left by another page's widget of this key.
    st.session_state[key] = get_param(name, options, default)

    def _changed() -> None:
        set_param(name, st.session_state[key])

    chosen = where.selectbox(label, options, key=key, format_func=format_func,
                             on_change=_changed, help=help)
    set_param(name, chosen)
    return chosen


def multiselect_param(label: str, name: str, options: Sequence[str], default: Sequence[str],
                      *, where: Any = None, help: str | None = None) -> list[str]:
    """A multiselect whose value is the comma-separated shared selection ``name``."""
    where = where or st
    key = f"param_{name}"
    st.session_state[key] = get_list_param(name, options, default)

    def _changed() -> None:
        set_param(name, ",".join(st.session_state[key]) or None)

    chosen = where.multiselect(label, list(options), key=key, on_change=_changed, help=help)
    set_param(name, ",".join(chosen) or None)
    return chosen


def show_table(df: pd.DataFrame, *, digits: int = 6, **kwargs: Any) -> Any:
    """st.dataframe with floats shown to ``digits`` significant digits (not 4 decimals)."""
    config = {c: st.column_config.NumberColumn(format=f"%.{digits}g")
              for c in df.columns if pd.api.types.is_float_dtype(df[c])}
    return st.dataframe(df, hide_index=True, column_config=config | kwargs.pop("column_config", {}),
                        **kwargs)


def fail(message: str) -> None:
    """Stop the page with an error that says what to do (never a traceback)."""
    st.error(message)
    st.stop()
