"""The bench's rows name both sides' kernels; its ort task checks and times qcal's ort flavour
against onnxruntime running the exported file, and skips what it cannot run, saying why."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from qcal.analysis import bench as bench_mod
from qcal.analysis.bench import (
    BenchRow,
    _ort_schemes,
    _row,
    format_bench,
    instruction_set,
    qcal_kernel,
)
from qcal.int8 import native
from qcal.schemes import SCHEMES

pytestmark = pytest.mark.usefixtures("one_thread")


def test_rows_against_torch_name_torchs_isa_and_qcals_kernel(monkeypatch):
    monkeypatch.delenv("QCAL_CPU", raising=False)
    monkeypatch.delenv("FBGEMM_ENABLE_INSTRUCTIONS", raising=False)
    row = _row("m", 8, "int8_inference", 0.2, 0.1)
    assert row.isa == instruction_set() == f"{torch.backends.cpu.get_cpu_capability()}, " + (
        "no VNNI" if "no VNNI" in row.isa else "VNNI")
    assert row.kernel == qcal_kernel() and row.baseline == "torch" and row.differing is None
    if native.available():
        assert row.kernel == f"{native.loaded_variant()} native"
    sens = _row("m", 8, "sensitivity_vs_compare", 0.2, 0.1, baseline="qcal compare")
    assert sens.isa == sens.kernel == qcal_kernel()


def test_rows_name_the_lowered_fbgemm_kernels_and_the_arithmetic_qcal_emulates(monkeypatch):
    monkeypatch.delenv("QCAL_CPU", raising=False)
    monkeypatch.setenv("FBGEMM_ENABLE_INSTRUCTIONS", "avx2")  # what torch's FBGEMM obeys at import
    assert instruction_set().endswith("; FBGEMM AVX2")
    assert qcal_kernel().endswith(", FBGEMM avx2 arithmetic")
    monkeypatch.delenv("FBGEMM_ENABLE_INSTRUCTIONS")
    monkeypatch.setenv("QCAL_CPU", "avx2")
    assert qcal_kernel().endswith(", FBGEMM avx2 arithmetic") and "FBGEMM" not in instruction_set()


def test_qcal_kernel_says_float_engine_without_the_native_kernel(monkeypatch):
    monkeypatch.setattr(native.build, "load", lambda: (None, "no C compiler (set CC, or install gcc)"))
    monkeypatch.delenv("QCAL_CPU", raising=False)
    monkeypatch.delenv("FBGEMM_ENABLE_INSTRUCTIONS", raising=False)
    assert qcal_kernel() == "float engine"


def test_the_table_prints_isa_kernel_baseline_per_row_and_skips_with_the_reason():
    rows = [BenchRow("a", 8, "int8_inference", 0.3, 0.1, isa="AVX512, VNNI", kernel="avx512_vnni native"),
            BenchRow("b", 1, "ort", 0.4, 0.2, isa="MLAS AVX512-VNNI", kernel="avx2 native", baseline="onnxruntime",
                     differing=0),
            BenchRow("c", 1, "ort", math.nan, math.nan, baseline="onnxruntime", skipped="export: no Identity"),
            BenchRow("c", 8, "ort", math.nan, math.nan, baseline="onnxruntime", skipped="export: no Identity")]
    lines = format_bench(rows).splitlines()
    header = lines[2].split()
    assert header == ["model", "batch", "task", "qcal_ms", "base_ms", "ratio", "vs", "isa", "kernel", "differing"]
    a, b = lines[3], lines[4]
    assert "AVX512, VNNI" in a and "avx512_vnni native" in a and "torch" in a
    assert "MLAS AVX512-VNNI" in b and "avx2 native" in b and "onnxruntime" in b and b.split()[-1] == "0"
    assert not any(line.split()[:1] == ["c"] for line in lines)  # not a table row
    assert "skipped c ort (batch 1, 8): export: no Identity" in lines  # one line for the batches alike
    assert "onnxruntime: as many intra- and inter-op threads" in lines[0]
    assert lines[-2] == "worst ratio (qcal/torch): 3.00 (a, batch 8, int8_inference)"
    assert lines[-1] == "worst ratio (qcal/onnxruntime): 2.00 (b, batch 1, ort)"
    alone = format_bench(rows[:1])
    assert "differing" not in alone and "onnxruntime" not in alone  # only where some row checked its outputs
    small = format_bench([BenchRow("d", 1, "int8_inference", 0.00008454, 0.0001)]).splitlines()[3].split()
    assert small[3:6] == ["0.08454", "0.1", "0.8454"]  # milliseconds, 4 digits, no exponent


def test_ort_tasks_pick_their_presets():
    assert _ort_schemes(["int8_inference"]) == []
    assert _ort_schemes(["ort"]) == ["fbgemm_default"]
    both = _ort_schemes(["ort", "ort_schemes"])
    assert both[0] == "fbgemm_default" and sorted(both) == sorted(SCHEMES)


def test_ort_session_threads_and_optimisation_level():
    ort = pytest.importorskip("onnxruntime")
    import qcal
    from qcal import zoo
    from qcal.analysis.bench_ort import ort_session
    from qcal.export.onnx import onnx_bytes
    from qcal.zoo.datasets import calib_batches, digits_splits

    qm = qcal.calibrate(zoo.load("digits_cnn"), calib_batches(digits_splits().calib[0][:64]), "fbgemm_default", "ort")
    so = ort_session(onnx_bytes(qm, input_shape=(1, 8, 8)), threads=2).get_session_options()
    assert so.intra_op_num_threads == so.inter_op_num_threads == 2
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_ort_task_is_exact_against_onnxruntime_and_names_the_kernels():
    pytest.importorskip("onnxruntime")
    from qcal.int8.cpu.mlas import ort_machine_dispatch

    rows = bench_mod.bench(["digits_cnn"], [4], repeat=1, calib_batches=2, tasks=["ort"], clock="cpu")
    (row,) = rows
    assert (row.task, row.baseline, row.skipped) == ("ort", "onnxruntime", "")
    assert row.qcal_s > 0 and row.torch_s > 0
    machine = ort_machine_dispatch()
    if machine is not None:
        assert row.isa == f"MLAS {machine.int8}"
        assert row.differing == 0  # qcal assumes this machine's dispatch: bit for bit
    assert row.kernel.startswith(qcal_kernel())


def test_ort_task_skips_what_the_export_refuses_saying_why(monkeypatch):
    pytest.importorskip("onnxruntime")
    from qcal.analysis.bench_ort import ort_bench_rows
    from qcal.export import onnx as onnx_mod
    from qcal.zoo import zoo
    from qcal.zoo.datasets import calib_batches, digits_splits

    def refuse(*args, **kwargs):
        raise onnx_mod.UnsupportedExport("to_onnx cannot write layer 'x' (Identity)")

    monkeypatch.setattr(onnx_mod, "onnx_bytes", refuse)
    data = calib_batches(digits_splits().calib[0][:16], batch_size=8)
    (row,) = ort_bench_rows(zoo.load("digits_cnn"), "digits_cnn", 8, data, 1, "cpu", ["per_tensor_affine"])
    assert row.task == "ort per_tensor_affine" and math.isnan(row.qcal_s)
    assert row.skipped == "export: to_onnx cannot write layer 'x' (Identity)"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails: every preset skipped, saying so
    rows = ort_bench_rows(zoo.load("digits_cnn"), "digits_cnn", 8, data, 1, "cpu", ["fbgemm_default", "qnnpack_default"])
    assert [r.skipped for r in rows] == ["onnxruntime is not installed"] * 2
