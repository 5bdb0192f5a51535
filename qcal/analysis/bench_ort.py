"""The bench's ``ort`` tasks: qcal's "ort" flavour against onnxruntime running the exported file.

Per (model, batch) and preset: ``calibrate(model, data, scheme, "ort", mode="graph")``, the
model written by ``qcal.export.onnx`` (``onnx_bytes``, the bytes ``to_onnx`` writes), an
``onnxruntime.InferenceSession`` on the CPU provider with the session options qcal's ort
flavour models (graph optimisation ORT_ENABLE_ALL, the default, plus ``ORT_OPTIONS``, none)
and ``intra_op``/``inter_op`` threads equal to torch's thread count (``--threads``); then
``qm(x)`` and ``session.run`` on the same batch, timed interleaved by the bench's
``_paired_medians``. Once, outside the timing, the two outputs are compared value by value
(``BenchRow.differing``; 0 where the flavour reproduces this machine's onnxruntime, which it
does when qcal assumes this machine's MLAS dispatch: the kernel column names the one it
assumes otherwise). A preset the flavour, the export or onnxruntime cannot run is a skipped
row saying why (``BenchRow.skipped``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from qcal.analysis.bench_rows import BenchRow, _paired_medians, qcal_kernel
from qcal.calibration.calibrate import calibrate
from qcal.runnable import unrunnable
from qcal.schemes import SCHEMES
from qcal.zoo import zoo

__all__ = ["ort_bench_rows", "ort_isa", "ort_session"]


def ort_isa() -> str:
    """The MLAS int8 kernels this machine's onnxruntime runs, e.g. "MLAS AVX512-VNNI"."""
    from qcal.int8.cpu.mlas import ort_machine_dispatch

    d = ort_machine_dispatch()
    return "MLAS (dispatch unknown here)" if d is None else f"MLAS {d.int8}"


def _ort_kernel() -> str:
    """qcal's kernel, plus the MLAS arithmetic it emulates where that is not this machine's."""
    from qcal.int8.backends.ort import ort_dispatch
    from qcal.int8.cpu.mlas import ort_machine_dispatch

    assumed, machine = ort_dispatch(), ort_machine_dispatch()
    same = machine is not None and assumed.name == machine.name
    return qcal_kernel() if same else f"{qcal_kernel()}, emulating MLAS {assumed.int8}"


def ort_session(model_bytes: bytes, threads: int | None = None):
    """An ``onnxruntime.InferenceSession`` (CPU provider) as qcal's ort flavour assumes it:
    ORT_ENABLE_ALL (the default) and ``ORT_OPTIONS``; ``threads`` intra- and inter-op threads
    (default: torch's)."""
    import onnxruntime as ort

    from qcal.int8.backends.ort import ORT_OPTIONS

    n = threads or torch.get_num_threads()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = so.inter_op_num_threads = n
    for key, value in ORT_OPTIONS.items():
        so.add_session_config_entry(key, value)
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def _skip(name: str, batch: int, task: str, why: str) -> BenchRow:
    nan = float("nan")
    return BenchRow(name, batch, task, nan, nan, isa=ort_isa(), kernel=qcal_kernel(), baseline="onnxruntime",
                    skipped=why)


def _differing(mine: torch.Tensor, theirs: np.ndarray) -> int:
    """Output values that differ (every value when the shapes do)."""
    m = mine.detach().numpy()
    return int(m.size) if m.shape != theirs.shape else int((m != theirs).sum())


def _prepared(model, name: str, data: list[torch.Tensor], scheme: str):
    """(qm, session) for one preset, or the reason it cannot run."""
    from qcal.export.onnx import UnsupportedExport, onnx_bytes

    why = unrunnable(SCHEMES[scheme], "ort")
    if why:
        return why
    qm = calibrate(model, data, scheme, "ort", mode="graph")
    if qm.mode != "graph":
        return f"calibrated in module-swap mode ({qm.fallback_reason}); to_onnx exports graph-mode models only"
    try:
        blob = onnx_bytes(qm, input_shape=tuple(zoo.info(name).input_shape))
    except UnsupportedExport as err:
        return f"export: {err}"
    try:
        return qm, ort_session(blob)
    except Exception as err:  # onnxruntime refusing the file: report it, keep the other cells
        return f"onnxruntime: {type(err).__name__}: {err}"


@torch.no_grad()
def ort_bench_rows(model, name: str, batch: int, data: list[torch.Tensor], repeat: int, clock: str,
                   schemes: Sequence[str]) -> list[BenchRow]:
    """One row per preset: ``qm(x)`` vs ``session.run`` on ``data[0]`` (see the module doc)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return [_skip(name, batch, _task(s), "onnxruntime is not installed") for s in schemes]
    rows = []
    for scheme in schemes:
        prepared = _prepared(model, name, data, scheme)
        if isinstance(prepared, str):
            rows.append(_skip(name, batch, _task(scheme), prepared))
            continue
        rows.append(_timed(*prepared, name, batch, _task(scheme), data[0], repeat, clock))
    return rows


def _timed(qm, session, name: str, batch: int, task: str, x: torch.Tensor, repeat: int, clock: str) -> BenchRow:
    """``qm(x)`` vs ``session.run`` interleaved, after one untimed check of their outputs."""
    feeds = {"input": x.numpy()}
    differing = _differing(qm(x), session.run(None, feeds)[0])
    q, t = _paired_medians(lambda: qm(x), lambda: session.run(None, feeds), repeat, warmup=1, clock=clock)
    return BenchRow(name, batch, task, q, t, isa=ort_isa(), kernel=_ort_kernel(), baseline="onnxruntime",
                    differing=differing)


def _task(scheme: str) -> str:
    return "ort" if scheme == "fbgemm_default" else f"ort {scheme}"
