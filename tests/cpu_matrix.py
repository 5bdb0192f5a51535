"""The CPU matrix: a test that asks for the ``cpu_set`` fixture runs once per FBGEMM instruction
set, against the real kernels of that set wherever this machine can run them.

A plain module beside conftest.py (tests/ is on sys.path through it), like wholemodel_cases.py;
conftest.py imports its hooks and fixture.

torch's FBGEMM reads ``FBGEMM_ENABLE_INSTRUCTIONS`` once, when torch is loaded, and lowers its
GEMM-family kernels (GEMM, im2col, pointwise) to the set it names; qcal's ``assumed_cpu()``
reads the same variable. So for each set in ``SETS``:

* the set this process runs (the machine's own, or the one ``FBGEMM_ENABLE_INSTRUCTIONS``
  already named) runs the test in-process;
* a lower set the machine can be lowered to (FBGEMM's ``isaSupportMap``) runs it in one child
  pytest per set, with ``FBGEMM_ENABLE_INSTRUCTIONS`` set before torch loads: every matrix test
  of that set in one subprocess, started when the first of them is reached; the parent reports
  each child's outcome, failure text included, under the test's own id;
* a set the machine cannot run is skipped, naming it: ``needs AVX512_E1: this CPU has AVX2``.

What is not lowered stays the machine's own in every column (FBGEMM's groupwise kernel and the
``x86`` engine's oneDNN route follow cpuinfo, depthwise is AVX2 code everywhere): a test asks
``qcal.int8.cpu.isa.saturates(family)`` what to expect rather than assuming it from the column.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from qcal.int8.cpu.flags import cpu_flags
from qcal.int8.cpu.isa import _FORCE_NAMES, _LOWER_TO, instruction_set_from_flags

#: FBGEMM's full-width x86 sets, weakest first (the ``_ymm`` variants need a Xeon D or one socket
#: and FBGEMM_ENABLE_AVX512_256; they are not part of the matrix).
SETS = ("avx2", "avx512", "avx512_vnni")
#: each set's FBGEMM_ENABLE_INSTRUCTIONS name
ENV_NAME = {isa: env for env, isa in _FORCE_NAMES.items()}
CHILD = "QCAL_TEST_CPU_SET"          # set in a child: the set it runs
REPORT = "QCAL_TEST_CPU_REPORT"      # and the file it writes its outcomes to
_CHILD_TIMEOUT = 1800


def machine_set() -> str:
    """The full-width set FBGEMM detects on this machine (``avx2`` off Linux x86)."""
    return instruction_set_from_flags(cpu_flags() or {"avx2"})


def process_set() -> str:
    """The set this process's torch runs: the machine's, lowered by FBGEMM_ENABLE_INSTRUCTIONS."""
    forced = _FORCE_NAMES.get(os.environ.get("FBGEMM_ENABLE_INSTRUCTIONS", "").upper())
    own = machine_set()
    return forced if forced in _LOWER_TO[own] else own


def where(isa: str) -> str:
    """"here" (this process), "child" (a subprocess lowered to ``isa``) or "skip"."""
    if os.environ.get(CHILD):
        return "here" if isa == os.environ[CHILD] else "skip"
    if isa == process_set():
        return "here"
    return "child" if isa in _LOWER_TO[machine_set()] else "skip"


def skip_reason(isa: str) -> str:
    return f"needs {ENV_NAME[isa]}: this CPU has {ENV_NAME[machine_set()]}"


def pytest_generate_tests(metafunc):
    if "cpu_set" in metafunc.fixturenames:
        metafunc.parametrize("cpu_set", SETS, indirect=True)


@pytest.fixture
def cpu_set(request) -> str:
    """The FBGEMM instruction set this run of the test checks (see the module doc)."""
    isa = request.param
    if where(isa) == "skip":
        pytest.skip(skip_reason(isa))
    return isa


def _set_of(item) -> str | None:
    spec = getattr(item, "callspec", None)
    return spec.params.get("cpu_set") if spec is not None else None


def _run_children(session, isa: str) -> dict[str, dict]:
    """Every matrix test of ``isa`` in one child pytest; their outcomes by node id."""
    ids = [item.nodeid for item in session.items if _set_of(item) == isa]
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "outcomes.jsonl"
        env = {**os.environ, "FBGEMM_ENABLE_INSTRUCTIONS": ENV_NAME[isa], CHILD: isa, REPORT: str(report)}
        env.pop("QCAL_CPU", None)  # the child's qcal assumes what its torch runs
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *ids],
                             cwd=session.config.rootpath, env=env, capture_output=True, text=True, timeout=_CHILD_TIMEOUT)
        outcomes = {}
        if report.exists():
            for line in report.read_text().splitlines():
                row = json.loads(line)
                if row["outcome"] != "passed" or row["nodeid"] not in outcomes:
                    outcomes[row["nodeid"]] = row
    tail = (run.stdout + run.stderr)[-3000:]
    return {i: outcomes.get(i, {"outcome": "failed", "text": f"no outcome from the child (exit {run.returncode}):\n{tail}"})
            for i in ids}


def pytest_pyfunc_call(pyfuncitem):
    """A matrix test whose set runs in a child: report the child's outcome instead of running."""
    isa = _set_of(pyfuncitem)
    if isa is None or where(isa) != "child":
        return None
    cache = pyfuncitem.session.stash.setdefault(_CHILD_OUTCOMES, {})
    if isa not in cache:
        cache[isa] = _run_children(pyfuncitem.session, isa)
    row = cache[isa][pyfuncitem.nodeid]
    if row["outcome"] == "skipped":
        pytest.skip(f"in the {ENV_NAME[isa]} child: {row['text']}")
    if row["outcome"] != "passed":
        pytest.fail(f"under FBGEMM_ENABLE_INSTRUCTIONS={ENV_NAME[isa]} (a child process):\n{row['text']}",
                    pytrace=False)
    return True


_CHILD_OUTCOMES = pytest.StashKey[dict]()


def pytest_runtest_logreport(report):
    """In a child, every phase's outcome to the parent's file (not passed wins over passed)."""
    path = os.environ.get(REPORT)
    if not path or not os.environ.get(CHILD):
        return
    if report.when != "call" and report.outcome == "passed":
        return
    text = report.longreprtext if report.outcome == "failed" else (
        str(report.longrepr[2]) if report.outcome == "skipped" and isinstance(report.longrepr, tuple) else "")
    with open(path, "a") as f:
        f.write(json.dumps({"nodeid": report.nodeid, "outcome": report.outcome, "text": text}) + "\n")


def pytest_collection_modifyitems(items):
    for item in items:
        isa = _set_of(item)
        if isa is not None:
            item.user_properties.append(("cpu_set", isa))


def checked_line(reports) -> str:
    """The one line CI prints: which sets ran against the real kernels, and which could not."""
    from qcal.int8.cpu.mlas import ort_machine_dispatch

    passed: dict[str, int] = {}
    for r in reports:
        isa = dict(r.user_properties).get("cpu_set")
        if isa is not None and r.when == "call" and r.outcome == "passed":
            passed[isa] = passed.get(isa, 0) + 1
    own = process_set()
    ran = [f"{isa} ({'native' if isa == own else 'FBGEMM_ENABLE_INSTRUCTIONS=' + ENV_NAME[isa]}, "
           f"{passed[isa]} tests)" for isa in SETS if isa in passed]
    missing = [isa for isa in SETS if isa not in passed]
    dispatch = ort_machine_dispatch()  # what this machine's onnxruntime runs, whatever QCAL_* emulate
    mlas = dispatch.name if dispatch else "none (not Linux x86 with AVX2)"
    line = f"checked against the real kernels: torch fbgemm/x86 {', '.join(ran) or 'none'}; onnxruntime MLAS {mlas} (native)"
    if missing:
        line += f"; not run: {', '.join(missing)} (this CPU has {ENV_NAME[machine_set()]})"
    return line
