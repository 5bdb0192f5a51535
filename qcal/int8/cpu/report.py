"""What ``qcal cpu`` (and the Requant page) says: this machine's instruction sets, what qcal
emulates for each backend, and how each CPU family was checked against the real kernels.

Three choices decide the integer arithmetic of a layer on x86, and qcal models each:

* **FBGEMM** (torch's ``fbgemm`` engine, and the ``x86`` engine's FBGEMM route), per kernel
  family: the GEMM family (linear, pointwise, im2col) follows ``fbgemmInstructionSet()``,
  which ``FBGEMM_ENABLE_INSTRUCTIONS`` can lower; groupwise follows cpuinfo; depthwise is AVX2
  code everywhere (``qcal.int8.cpu.isa``). ``QCAL_CPU`` emulates another CPU.
* **torch's x86 engine**: a convolution goes to oneDNN on an AVX512-VNNI CPU (groups <= 100,
  symmetric weights), else to FBGEMM (``qcal.int8.backends.onednn``).
* **onnxruntime's MLAS**: its own dispatch from cpuinfo (``qcal.int8.backends.ort``).

``CHECKED`` is the record of which families the test suite has run against the real kernels
(the suite's CPU matrix runs torch under each ``FBGEMM_ENABLE_INSTRUCTIONS`` set the machine can
be lowered to); a family no machine here could run is "source only".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qcal.int8.backends.onednn import x86_uses_onednn
from qcal.int8.backends.ort import ort_dispatch, ort_saturates
from qcal.int8.cpu.flags import cpu_flags
from qcal.int8.cpu.isa import (
    _LOWER_TO,
    KernelFamily,
    assumed_cpu,
    instruction_set_from_flags,
    saturates,
)
from qcal.int8.cpu.mlas import ort_dispatch_report

__all__ = ["CHECKED", "FamilyRow", "cpu_report", "format_cpu_report", "lowerable_sets"]

#: (backend, CPU family) -> how it was checked against the real kernels
CHECKED: dict[tuple[str, str], str] = {
    ("FBGEMM", "avx2"): "hardware: AMD EPYC (AVX2); on AVX-512 machines with FBGEMM_ENABLE_INSTRUCTIONS=AVX2",
    ("FBGEMM", "avx512"): "hardware: Intel Xeon lowered by the CPU matrix (FBGEMM_ENABLE_INSTRUCTIONS=AVX512), GEMM family",
    ("FBGEMM", "avx512_vnni"): "hardware: Intel Xeon (AVX-512-VNNI, AMX) and AMD EPYC (AVX-512-VNNI), kernel sweeps and whole models",
    ("FBGEMM", "avx512_ymm, avx512_vnni_ymm"): "source only (FBGEMM_ENABLE_AVX512_256, one socket or Xeon D)",
    ("x86 engine", "FBGEMM route"): "as FBGEMM",
    ("x86 engine", "oneDNN route (VNNI, AMX)"): "hardware: Intel Xeon (AMX), AMD EPYC (AVX-512-VNNI), kernel sweeps; one-column outputs at a column stride refused",
}
_FAMILIES: tuple[KernelFamily, ...] = ("gemm", "pointwise", "im2col", "groupwise", "depthwise")
_INTERESTING = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "amx_int8",
                "amx_tile")


@dataclass(frozen=True)
class FamilyRow:
    """One FBGEMM kernel family as qcal emulates it: the ISA its code uses, and whether it
    sums u8 x s8 products in saturating int16 pairs."""

    family: str
    isa: str
    saturates: bool


def lowerable_sets() -> tuple[str, ...]:
    """The full-width FBGEMM sets torch on this machine can run (``FBGEMM_ENABLE_INSTRUCTIONS``)."""
    own = instruction_set_from_flags(cpu_flags() or {"avx2"})
    return tuple(s for s in ("avx2", "avx512", "avx512_vnni") if s in _LOWER_TO[own])


def cpu_report() -> dict:
    """The facts ``format_cpu_report`` prints, as data."""
    cpu = assumed_cpu()
    flags = cpu_flags()
    rows = [FamilyRow(f, "avx2 (code)" if f == "depthwise" else
                      (cpu.gemm_isa if f in ("gemm", "pointwise", "im2col") else cpu.isa), saturates(f, cpu))
            for f in _FAMILIES]
    return {
        "flags": [f for f in _INTERESTING if f in flags],
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        "fbgemm": cpu.describe(),
        "families": rows,
        "x86_conv_route": "oneDNN" if x86_uses_onednn(0, 1, cpu) else "FBGEMM",
        "mlas": f"{ort_dispatch().name} ({ort_dispatch().int8})",
        "mlas_u8s8_saturates": ort_saturates(),
        "checkable_here": lowerable_sets(),
        "checked": {**CHECKED, **{("MLAS", f"{name} ({'saturating' if sat else 'exact'} int8)"): how
                                  for name, _, sat, _, how in ort_dispatch_report()}},
    }


def format_cpu_report(report: dict | None = None) -> str:
    """``qcal cpu``'s text."""
    r = report or cpu_report()
    flags = ", ".join(r["flags"]) or "none read (not Linux x86)"
    lines = [f"this machine: {flags} (torch's capability: {r['torch_capability']})",
             f"FBGEMM (engines fbgemm and x86), emulated: {r['fbgemm']}"]
    lines += [f"  {row.family:10s} {row.isa:14s} int16 pairs {'saturate' if row.saturates else 'exact'}"
              for row in r["families"]]
    route = r["x86_conv_route"]
    lines.append(f"torch's x86 engine: convolutions with symmetric weights and <= 100 groups run {route}"
                 + ("" if route == "oneDNN" else " (oneDNN needs AVX512-VNNI); linear layers run FBGEMM"))
    lines.append(f"onnxruntime (MLAS), emulated: {r['mlas']}; U8S8 GEMM pairs "
                 f"{'saturate' if r['mlas_u8s8_saturates'] else 'exact'}, depthwise exact")
    lines.append("checked against the real kernels:")
    lines += [f"  {backend:10s} {family:40s} {how}" for (backend, family), how in r["checked"].items()]
    lines.append("the test suite's CPU matrix checks FBGEMM against torch here at: " + ", ".join(r["checkable_here"])
                 + " (FBGEMM_ENABLE_INSTRUCTIONS lowers the GEMM family; higher sets need a newer CPU)")
    lines.append("emulate another machine: QCAL_CPU=avx2|avx512|avx512_vnni (FBGEMM, x86; --cpu on the "
                 "CLI commands that take it), QCAL_ORT_CPU=avx2|avx_vnni|avx512|avx512_vnni|amx (onnxruntime)")
    return "\n".join(lines)
