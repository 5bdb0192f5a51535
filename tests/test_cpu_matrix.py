"""The CPU matrix (cpu_matrix.py): which set runs where, the skip's words, and a child's
outcome reported under the parent's test id."""

import os
import textwrap
from pathlib import Path

import cpu_matrix
import pytest

pytest_plugins = ["pytester"]


@pytest.mark.parametrize(("machine", "forced", "want"), [
    ("avx2", "", {"avx2": "here", "avx512": "skip", "avx512_vnni": "skip"}),
    ("avx512", "", {"avx2": "child", "avx512": "here", "avx512_vnni": "skip"}),
    ("avx512_vnni", "", {"avx2": "child", "avx512": "child", "avx512_vnni": "here"}),
    ("avx512_vnni", "AVX2", {"avx2": "here", "avx512": "child", "avx512_vnni": "child"}),
    ("avx2", "AVX512_E1", {"avx2": "here", "avx512": "skip", "avx512_vnni": "skip"}),  # cannot raise a set
])
def test_each_set_runs_here_in_a_child_or_is_skipped(monkeypatch, machine, forced, want):
    monkeypatch.setattr(cpu_matrix, "machine_set", lambda: machine)
    monkeypatch.setenv("FBGEMM_ENABLE_INSTRUCTIONS", forced)
    monkeypatch.delenv(cpu_matrix.CHILD, raising=False)
    assert {isa: cpu_matrix.where(isa) for isa in cpu_matrix.SETS} == want


def test_the_skip_names_the_set_needed_and_the_cpus(monkeypatch):
    monkeypatch.setattr(cpu_matrix, "machine_set", lambda: "avx2")
    assert cpu_matrix.skip_reason("avx512_vnni") == "needs AVX512_E1: this CPU has AVX2"


def test_lowered_sets_run_in_one_child_each_and_report_under_the_parents_ids(pytester, monkeypatch):
    # the parent believes it is on a VNNI machine; the children really run here, with
    # FBGEMM_ENABLE_INSTRUCTIONS set, and their failures come back with their text
    monkeypatch.setattr(cpu_matrix, "machine_set", lambda: "avx512_vnni")
    monkeypatch.delenv("FBGEMM_ENABLE_INSTRUCTIONS", raising=False)
    monkeypatch.delenv(cpu_matrix.CHILD, raising=False)
    tests_dir = Path(cpu_matrix.__file__).parent  # the children import cpu_matrix and this checkout's qcal
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tests_dir), str(tests_dir.parent),
                                                      os.environ.get("PYTHONPATH", "")]))
    pytester.makeconftest("from cpu_matrix import cpu_set, pytest_generate_tests, pytest_pyfunc_call, "
                          "pytest_runtest_logreport  # noqa: F401")
    log = pytester.path / "pids.txt"
    pytester.makepyfile(test_m=textwrap.dedent(f"""
        import os
        def test_env(cpu_set):
            with open({str(log)!r}, "a") as f:
                f.write(f"{{cpu_set}} {{os.getpid()}}\\n")
            want = {{"avx2": "AVX2", "avx512": "AVX512"}}.get(cpu_set)
            assert os.environ.get("FBGEMM_ENABLE_INSTRUCTIONS") == want
        def test_fails_when_lowered(cpu_set):
            assert cpu_set == "avx512_vnni", "boom " + cpu_set
    """))
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=4, failed=2)
    result.stdout.fnmatch_lines(["*FBGEMM_ENABLE_INSTRUCTIONS=AVX2 (a child process)*", "*boom avx2*"])
    pids: dict[str, set[str]] = {}
    rows = [line.split() for line in log.read_text().splitlines()]
    for isa, pid in rows:
        pids.setdefault(isa, set()).add(pid)
    assert len(set.union(*pids.values())) == 3 and all(len(p) == 1 for p in pids.values())
    assert pids["avx512_vnni"] == {str(os.getpid())}
