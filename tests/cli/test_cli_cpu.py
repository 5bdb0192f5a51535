"""``qcal cpu``: the machine's sets, what each backend is emulated as, and the checks record."""

import pytest

from qcal.cli.main import main
from qcal.int8.cpu.mlas import ort_dispatch_report
from qcal.int8.cpu.report import CHECKED, cpu_report


@pytest.mark.parametrize(("cpu", "gemm", "route", "mlas"), [
    ("avx2", "saturate", "FBGEMM", "avx2 (AVX2 (no VNNI))"),
    ("avx512", "saturate", "FBGEMM", "avx512 (AVX512 (no VNNI))"),
    ("avx512_vnni", "exact", "oneDNN", "avx512_vnni (AVX512-VNNI)"),
])
def test_cpu_names_what_each_backend_is_emulated_as(capsys, monkeypatch, cpu, gemm, route, mlas):
    monkeypatch.delenv("FBGEMM_ENABLE_INSTRUCTIONS", raising=False)
    monkeypatch.delenv("QCAL_ORT_CPU", raising=False)
    assert main(["cpu", "--cpu", cpu]) == 0
    out = capsys.readouterr().out
    assert f"emulated: {cpu} (asked for)" in out
    assert f"  gemm       {cpu:14s} int16 pairs {gemm}" in out
    assert "  depthwise  avx2 (code)    int16 pairs saturate" in out  # AVX2 code on every CPU
    assert f"run {route}" in out and f"onnxruntime (MLAS), emulated: {mlas}" in out
    for (backend, family), how in CHECKED.items():
        assert f"{backend:10s} {family:40s} {how}" in out
    for name, _, saturates, _, how in ort_dispatch_report():  # each MLAS dispatch and how it was checked
        assert f"MLAS       {name} ({'saturating' if saturates else 'exact'} int8)" in out and how in out
    assert "QCAL_CPU=" in out and "QCAL_ORT_CPU=" in out


def test_cpu_without_arguments_reports_this_machine(capsys):
    assert main(["cpu"]) == 0
    out = capsys.readouterr().out
    report = cpu_report()
    assert out.startswith("this machine: ") and report["fbgemm"] in out
    assert "avx2" in report["checkable_here"] or not report["flags"]


def test_an_unknown_cpu_is_one_line_naming_the_choices(capsys):
    assert main(["cpu", "--cpu", "pentium"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("qcal: error: isa 'pentium' is not an instruction set") and "avx512_vnni" in err
