"""CLI subcommand ``cpu``: this machine's instruction sets, what qcal emulates for each backend,
and how each CPU family was checked against the real kernels (``qcal.int8.cpu.report``)."""

from __future__ import annotations

import argparse

from qcal.cli.args import arg, command, write

__all__ = ["cpu_command"]


@command(
    "cpu",
    "name this machine's instruction sets, what qcal emulates for FBGEMM, torch's x86 engine and "
    "onnxruntime, what was checked against the real kernels, and how to emulate another machine",
    arg("--cpu", default=None, help="report as QCAL_CPU=NAME would (avx2, avx512, avx512_vnni, ...)"),
)
def cpu_command(args: argparse.Namespace) -> int:
    from qcal.int8.cpu.isa import AssumedCpu, assumed_cpu, emulating
    from qcal.int8.cpu.report import format_cpu_report

    if args.cpu is None:
        write(format_cpu_report())
        return 0
    cpu: AssumedCpu = assumed_cpu(args.cpu)
    with emulating(cpu):
        write(format_cpu_report())
    return 0
