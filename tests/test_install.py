"""Installing qcal: the console command from any folder; generated files in the checkout's
data/ for an editable install, in the user's cache for an installed copy (never in
site-packages); QCAL_DATA_DIR overrides both."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from qcal.paths import checkout_root, data_dir, user_cache_dir

ROOT = Path(__file__).resolve().parent.parent


def test_a_checkout_keeps_data_in_its_folder_and_an_installed_copy_in_the_cache(tmp_path, monkeypatch):
    checkout = tmp_path / "src" / "qcal"
    checkout.mkdir(parents=True)
    (tmp_path / "src" / "pyproject.toml").write_text("[project]\nname = 'qcal'\n")
    installed = tmp_path / "lib" / "python3.11" / "site-packages" / "qcal"
    installed.mkdir(parents=True)
    (installed.parent / "pyproject.toml").write_text("")  # even a stray file there is no checkout
    assert checkout_root(checkout) == tmp_path / "src"
    assert checkout_root(installed) is None
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    if sys.platform.startswith("linux"):
        assert user_cache_dir() == tmp_path / "cache" / "qcal"
    monkeypatch.delenv("QCAL_DATA_DIR", raising=False)
    assert data_dir() == ROOT / "data"  # the tests run from this checkout
    monkeypatch.setenv("QCAL_DATA_DIR", str(tmp_path / "elsewhere"))
    assert data_dir() == tmp_path / "elsewhere"


def _venv(tmp_path: Path) -> Path:
    """A venv that sees this interpreter's packages (torch...) through a .pth file, so pip
    installs qcal alone, offline."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "base.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return python


def _pip_install(python: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                    "--no-build-isolation", "--no-index", "-q", *args], check=True)


def _in(folder: Path, *argv: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "QCAL_DATA_DIR")}
    env["XDG_CACHE_HOME"] = str(folder / "cache")
    return subprocess.run(argv, cwd=folder, env=env, check=True, capture_output=True, text=True).stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="venv layout checked on Linux")
def test_editable_and_regular_installs_run_from_any_folder(tmp_path):
    python = _venv(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = "import qcal, qcal.paths; print(qcal.__file__); print(qcal.paths.data_dir())"

    _pip_install(python, "-e", str(ROOT))  # what `pip install -r requirements.txt` does
    assert "usage: qcal" in _in(elsewhere, str(python.parent / "qcal"), "--help")
    assert "--list-models" in _in(elsewhere, str(python), "-m", "qcal", "compare", "--help")
    module, data = _in(elsewhere, str(python), "-c", where).split()
    assert Path(module) == ROOT / "qcal" / "__init__.py" and Path(data) == ROOT / "data"

    source = tmp_path / "source"  # a copy: a regular build writes build/ into its source
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns("data", ".git", ".venv", "*.egg-info", "__pycache__", "build"))
    _pip_install(python, str(source))
    module, data = _in(elsewhere, str(python), "-c", where).split()
    assert "site-packages" in Path(module).parts
    assert Path(data) == elsewhere / "cache" / "qcal"
    assert "usage: qcal" in _in(elsewhere, str(python.parent / "qcal"), "--help")
