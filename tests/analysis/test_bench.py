"""The bench's table names the instruction set, reports memory rows, refuses unknown tasks."""

from __future__ import annotations

import pytest

from qcal.analysis.bench import BenchRow, _paired_medians, bench, format_bench, instruction_set
from qcal.analysis.bench_memory import MemoryRow, OnTheFly


def test_unknown_tasks_and_clocks_are_refused_by_name():
    with pytest.raises(ValueError, match="bogus"):
        bench(["digits_cnn"], [1], tasks=["bogus"])
    with pytest.raises(ValueError, match="sundial"):
        bench(["digits_cnn"], [1], clock="sundial")


def test_the_table_names_isa_threads_clock_and_memory_growth():
    rows = [BenchRow("m", 32, "int8_inference", 0.3, 0.1)]
    memory = [MemoryRow("resnet18_like", 4, 8, 1000.0), MemoryRow("resnet18_like", 4, 64, 1050.0)]
    text = format_bench(rows, memory, clock="cpu")
    first = text.splitlines()[0]
    assert instruction_set() in first and "cpu clock" in first and "threads" in first
    assert "VNNI" in instruction_set()
    assert "8 calibration batches" in text and "64 calibration batches" in text and "+5.0%" in text
    assert "worst ratio (qcal/torch): 3.00" in text
    engine = text.splitlines()[1]  # which integer engine ran, and its build kept out of the medians
    assert engine.startswith("qcal int8 engine: ")
    assert ("native kernel" in engine and "not in the medians" in engine) or "float engine" in engine


def test_the_engine_line_says_why_without_the_native_kernel(monkeypatch):
    from qcal.analysis import bench as bench_mod
    from qcal.int8 import native

    monkeypatch.setattr(native.build, "load", lambda: (None, "no C compiler (set CC, or install gcc)"))
    assert bench_mod.engine_line() == ("qcal int8 engine: float engine + saturation emulation "
                                       "(native kernel: no C compiler (set CC, or install gcc))")


def test_paired_medians_interleave_the_two_sides():
    order = []
    _paired_medians(lambda: order.append("q"), lambda: order.append("t"), 3, warmup=1)
    assert order == ["q", "t"] * 4


def test_on_the_fly_batches_are_the_same_on_every_pass_and_never_a_list():
    data = OnTheFly(3, (2, 4), seed=7)
    first, second = list(data), list(data)
    assert len(data) == 3 and len(first) == 3
    assert all((a == b).all() for a, b in zip(first, second, strict=True))
    assert not (first[0] == first[1]).all()
