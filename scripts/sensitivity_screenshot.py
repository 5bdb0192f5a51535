"""Make docs/sensitivity.png: the Sensitivity page's heatmap on digits_mobilenet, in Debian's chromium.

Starts ``streamlit run dashboard.py`` on a free loopback port with a temporary run store,
opens the Sensitivity page, clicks the scan button, waits for the heatmap and screenshots it.
Run from the repository root: ``python scripts/sensitivity_screenshot.py [--out PATH]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
QUERY = ("model=digits_mobilenet&backend=fbgemm&sens_eval=100"
         "&sens_schemes=per_tensor_affine,per_tensor_symmetric,per_channel_affine,per_channel_symmetric")
SCAN_SECONDS = 900  # four calibration passes and 64 evaluations on a busy 2-core machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("streamlit did not start")


def shoot(out: Path) -> None:
    """Serve the dashboard, scan, and save the heatmap's screenshot to ``out``."""
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("Debian's chromium is not installed (apt-get install chromium)")
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "QCAL_STORE": str(Path(tmp) / "runs.sqlite")}
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "dashboard.py", "--server.headless",
                                 "true", "--server.address", "127.0.0.1", "--server.port", str(port),
                                 "--browser.gatherUsageStats", "false"],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(url, proc)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox"])
                page = browser.new_page(viewport={"width": 1200, "height": 900})
                page.goto(f"{url}/sensitivity?{QUERY}")
                page.locator(".st-key-sens_scan button").click(timeout=120_000)
                chart = page.locator(".st-key-sens_heatmap .js-plotly-plot .main-svg").first
                chart.wait_for(state="visible", timeout=SCAN_SECONDS * 1000)
                time.sleep(1)  # plotly's last layout pass
                out.parent.mkdir(parents=True, exist_ok=True)
                page.locator(".st-key-sens_heatmap").screenshot(path=str(out))
                browser.close()
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "sensitivity.png")
    shoot(parser.parse_args().out)
