"""Shared test setup: deterministic seeds, torch's quantization warnings silenced, the
quantized engine restored after every test, and the CPU matrix (``cpu_set``, cpu_matrix.py)."""

import pytest
import torch
from cpu_matrix import (
    checked_line,
    cpu_set,
    pytest_collection_modifyitems,
    pytest_generate_tests,
    pytest_pyfunc_call,
    pytest_runtest_logreport,
)

from qcal import _torch_warnings

# the CPU matrix's fixture and hooks
__all__ = ["cpu_set", "pytest_collection_modifyitems", "pytest_generate_tests", "pytest_pyfunc_call",
           "pytest_runtest_logreport"]


@pytest.fixture(autouse=True)
def _seed_and_quiet():
    # pytest restores the warning filters around every test, so the filters that
    # `import qcal` installs once are re-applied here, from the same single list.
    _torch_warnings.silence()
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_quantized_engine():
    # many tests (and torch oracles) set the process-wide engine; the next test must not
    # inherit it, or its result would depend on the order tests run in
    before = torch.backends.quantized.engine
    yield
    torch.backends.quantized.engine = before


@pytest.fixture(scope="module")
def one_thread():
    """Run a module single-threaded: on tiny tensors and busy cores, waking OpenMP workers
    costs more than the work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_terminal_summary(terminalreporter):
    """List the slow tests that ran (the exactness sweeps), so CI's log shows them, and say
    which instruction sets the CPU matrix checked against the real kernels."""
    matrix = [r for outcome in ("passed", "failed", "skipped") for r in terminalreporter.stats.get(outcome, [])
              if "cpu_set" in dict(getattr(r, "user_properties", ()))]
    if matrix:
        terminalreporter.write_line(checked_line(matrix))
    reports = [r for outcome in ("passed", "failed", "error") for r in terminalreporter.stats.get(outcome, [])
               if getattr(r, "when", None) == "call" and "slow" in r.keywords]
    if not reports:
        return
    write = terminalreporter.write_line
    write(f"slow tests run: {len(reports)}, {sum(r.duration for r in reports):.0f} s in all")
    for r in sorted(reports, key=lambda r: r.nodeid):
        write(f"  {r.outcome:6s} {r.duration:7.1f} s  {r.nodeid}")
