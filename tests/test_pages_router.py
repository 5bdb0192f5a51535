"""pages/_state.require_router flips one private Streamlit flag; this fails loudly when Streamlit
changes what that flag means (then look for a supported switch, or adapt require_router)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from streamlit.commands import navigation
from streamlit.runtime.pages_manager import PagesManager
from streamlit.runtime.scriptrunner import script_runner

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh_flag():
    saved = PagesManager.uses_pages_directory
    PagesManager.uses_pages_directory = None
    yield
    PagesManager.uses_pages_directory = saved


def test_a_pages_folder_beside_the_entry_script_still_turns_on_streamlits_legacy_flag(fresh_flag, tmp_path):
    PagesManager(str(ROOT / "dashboard.py"), setup_watcher=False)
    assert PagesManager.uses_pages_directory is True, "dashboard.py beside pages/ no longer means legacy mode"
    PagesManager.uses_pages_directory = None
    (tmp_path / "app.py").write_text("")
    PagesManager(str(tmp_path / "app.py"), setup_watcher=False)
    assert PagesManager.uses_pages_directory is False


def test_the_script_runner_still_reads_the_flag_and_st_navigation_still_clears_it():
    assert "PagesManager.uses_pages_directory" in inspect.getsource(script_runner.ScriptRunner), \
        "the script runner no longer reads the flag require_router flips"
    assert callable(getattr(script_runner, "_mpa_v1", None)), "the legacy pages runner is gone"
    assert "PagesManager.uses_pages_directory = False" in inspect.getsource(navigation.navigation), \
        "st.navigation no longer clears the flag"
