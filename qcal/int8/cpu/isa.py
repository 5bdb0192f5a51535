"""The x86 instruction set qcal assumes for FBGEMM, and which kernel families saturate on it.

FBGEMM picks its kernels from cpuinfo (``fbgemmInstructionSet`` in FBGEMM's src/Utils.cc):
``avx512_vnni`` when the CPU has AVX512-VNNI, else ``avx512`` with AVX-512 F+BW+DQ+VL, else
``avx2``; the ``_ymm`` variants (256-bit AVX-512 code) only when ``FBGEMM_ENABLE_AVX512_256``
is set on a single-socket or Xeon D machine. **AVX-VNNI without AVX-512** (``avx_vnni``:
Intel 12th-14th generation laptops) is not asked for: those CPUs run the ``avx2`` kernels.

Per kernel family (FBGEMM's ``ConvFastPath``; torch's fbgemm and x86 engines run it):

=============  =======================================  ===================================
family         kernel                                   int16 pairs saturate on
=============  =======================================  ===================================
gemm           linear: PackAWithRowOffset x PackBMatrix  every ISA but avx512_vnni(_ymm)
pointwise      1x1 conv, stride 1, no padding: the GEMM  same as gemm
im2col         other convs: PackAWithIm2Col + the GEMM   same as gemm
groupwise      3x3 pad 1, 2/4/8/16 channels per group    every ISA but avx512_vnni(_ymm)
depthwise      3x3/5x5/7x7 depthwise, "same" padding     every ISA (AVX2 code, vpmaddubsw)
=============  =======================================  ===================================

The GEMM kernels follow ``fbgemmInstructionSet()``, which ``FBGEMM_ENABLE_INSTRUCTIONS``
can lower (``AVX2``, ``AVX512``, ``AVX512_E1`` = avx512_vnni, ...); the groupwise kernel asks
cpuinfo directly and ignores it; depthwise is AVX2 code everywhere. Without VNNI the u8 x s8
products are summed in adjacent pairs with ``vpmaddubsw`` (int16, saturating) in every family;
``vpdpbusd`` (VNNI) sums four in int32 and never saturates.

Which CPU: the ``isa`` argument, else the CPU set by ``emulating(cpu)`` in this context (how
a Dask job computes with its client's CPU, whatever the worker's environment), else the
``QCAL_CPU`` environment variable (e.g.
``QCAL_CPU=avx2`` shows what a colleague's AVX2 laptop computes), else the flags of
``/proc/cpuinfo`` on Linux x86. Elsewhere (macOS, Windows, ARM: no /proc/cpuinfo, and on ARM
no FBGEMM at all) qcal emulates an x86 CPU, ``avx2`` unless ``QCAL_CPU`` says otherwise.

Checked against torch on real hardware: ``avx2`` (AMD EPYC, AVX2 without AVX-512) and
``avx512_vnni`` (an earlier AVX512-VNNI machine). ``avx512`` without VNNI and the ``_ymm``
variants follow from FBGEMM's source only.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import sys
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from qcal.int8.cpu.flags import cpu_flags
from qcal.int8.cpu.mlas import ort_dispatch_name

__all__ = [
    "ENV_VAR",
    "INSTRUCTION_SETS",
    "AssumedCpu",
    "InstructionSet",
    "KernelFamily",
    "assumed_cpu",
    "emulating",
    "instruction_set",
    "instruction_set_from_flags",
    "saturates",
]

InstructionSet = Literal["avx2", "avx512", "avx512_ymm", "avx512_vnni", "avx512_vnni_ymm"]
#: FBGEMM's x86 instruction sets (``inst_set_t``), weakest first.
INSTRUCTION_SETS: tuple[str, ...] = get_args(InstructionSet)
KernelFamily = Literal["gemm", "pointwise", "im2col", "groupwise", "depthwise"]
#: The environment variable naming the CPU to emulate.
ENV_VAR = "QCAL_CPU"
Source = Literal["argument", "QCAL_CPU", "/proc/cpuinfo", "default"]

_AVX512 = frozenset({"avx512f", "avx512bw", "avx512dq", "avx512vl"})  # fbgemmHasAvx512Support
_VNNI_ISAS = frozenset({"avx512_vnni", "avx512_vnni_ymm"})
# FBGEMM_ENABLE_INSTRUCTIONS values and the ISAs each detected ISA may be lowered to (isaSupportMap)
_FORCE_NAMES = {"AVX2": "avx2", "AVX512": "avx512", "AVX512_E1": "avx512_vnni",
                "AVX512_256": "avx512_ymm", "AVX512_E1_256": "avx512_vnni_ymm"}
_LOWER_TO = {
    "avx2": {"avx2"},
    "avx512": {"avx512", "avx512_ymm", "avx2"},
    "avx512_ymm": {"avx512", "avx512_ymm", "avx2"},
    "avx512_vnni": set(INSTRUCTION_SETS),
    "avx512_vnni_ymm": set(INSTRUCTION_SETS),
}
_GEMM_FAMILIES = frozenset({"gemm", "pointwise", "im2col"})
_FAMILIES = frozenset(get_args(KernelFamily))


def instruction_set_from_flags(flags: Iterable[str], *, avx512_256: bool = False) -> InstructionSet:
    """FBGEMM's ``fbgemmInstructionSet()`` detection, from Linux ``/proc/cpuinfo`` flag names.

    Args:
        flags: CPU flags (``avx2``, ``avx512f``, ``avx512_vnni``, ``avx_vnni`` ...).
        avx512_256: FBGEMM's 256-bit AVX-512 choice is on (``FBGEMM_ENABLE_AVX512_256`` on a
            single-socket or Xeon D machine).

    Example:
        >>> instruction_set_from_flags({"avx2", "avx_vnni"})  # AVX-VNNI alone does not count
        'avx2'
    """
    f = frozenset(flags)
    if "avx512_vnni" in f:  # cpuinfo_has_x86_avx512vnni
        return "avx512_vnni_ymm" if avx512_256 else "avx512_vnni"
    if f >= _AVX512:
        return "avx512_ymm" if avx512_256 else "avx512"
    return "avx2"


def _check(isa: str, where: str) -> InstructionSet:
    name = isa.strip().lower()
    if name not in INSTRUCTION_SETS:
        raise ValueError(f"{where} {isa!r} is not an instruction set; expected one of: {', '.join(INSTRUCTION_SETS)}")
    return name  # type: ignore[return-value]


@functools.lru_cache(maxsize=8)
def _from_cpuinfo(flags: frozenset[str], avx512_256: bool) -> InstructionSet:
    # once per flag set: every layer call asks (a frozenset keeps its hash, so the key is cheap)
    return instruction_set_from_flags(flags, avx512_256=avx512_256)


def _linux_x86() -> bool:
    return sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")


def _avx512_256_enabled() -> bool:
    # fbgemmEnvAvx512_256Enabled() and fbgemmIsIntelXeonD() (a Xeon D or one package)
    if os.environ.get("FBGEMM_ENABLE_AVX512_256", "").lower() not in ("1", "true"):
        return False
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    packages = {line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("physical id")}
    return "Xeon D-" in text or len(packages) <= 1


@dataclass(frozen=True)
class AssumedCpu:
    """The x86 CPU qcal emulates for FBGEMM and torch's x86 engine.

    Attributes:
        isa: the CPU's instruction set as FBGEMM detects it (groupwise, depthwise, and the
            x86 engine's oneDNN choice follow it).
        gemm_isa: the ISA of FBGEMM's GEMM kernels: ``isa`` unless
            ``FBGEMM_ENABLE_INSTRUCTIONS`` lowers it.
        source: where ``isa`` came from: "argument", "QCAL_CPU", "/proc/cpuinfo" or "default"
            (not Linux x86: the emulated default, avx2).
        mlas: onnxruntime's MLAS dispatch for the ort flavour (``QCAL_ORT_CPU``, else read from
            /proc/cpuinfo, ``qcal.int8.cpu.mlas``); None follows ``isa``.
    """

    isa: InstructionSet
    gemm_isa: InstructionSet
    source: Source
    mlas: str | None = None

    @property
    def vnni(self) -> bool:
        """True when the CPU has AVX512-VNNI (``cpuinfo_has_x86_avx512vnni``)."""
        return self.isa in _VNNI_ISAS

    def describe(self) -> str:
        """One line for people, e.g. ``"avx2 (from /proc/cpuinfo)"``."""
        gemm = f", GEMM kernels {self.gemm_isa} (FBGEMM_ENABLE_INSTRUCTIONS)" if self.gemm_isa != self.isa else ""
        where = {"default": "emulated default: not a Linux x86 machine", "argument": "asked for"}.get(
            self.source, f"from {self.source}")
        return f"{self.isa} ({where}{gemm})"


# Per context, not per process: a Dask worker runs jobs of several clients on its threads.
_EMULATED: ContextVar[AssumedCpu | None] = ContextVar("qcal_emulated_cpu", default=None)


def assumed_cpu(isa: str | None = None) -> AssumedCpu:
    """The CPU qcal emulates: ``isa`` if given, else the one ``emulating`` set in this context,
    else ``QCAL_CPU``, else this machine's flags.

    Off Linux x86 the default is an ``avx2`` CPU (see the module doc).

    Raises:
        ValueError: ``isa`` or ``QCAL_CPU`` names no instruction set (or ``QCAL_ORT_CPU`` no
            MLAS dispatch).
    """
    env = os.environ.get(ENV_VAR)
    emulated = _EMULATED.get()
    if isa is None and emulated is not None:
        return emulated
    if isa is not None:
        hw, source = _check(isa, "isa"), "argument"
    elif env:
        hw, source = _check(env, ENV_VAR), "QCAL_CPU"
    elif _linux_x86() and cpu_flags():
        hw, source = _from_cpuinfo(cpu_flags(), _avx512_256_enabled()), "/proc/cpuinfo"
    else:
        hw, source = "avx2", "default"
    forced = _FORCE_NAMES.get(os.environ.get("FBGEMM_ENABLE_INSTRUCTIONS", "").upper())
    gemm = forced if forced in _LOWER_TO[hw] else hw
    return AssumedCpu(hw, gemm, source, ort_dispatch_name(source))


@contextlib.contextmanager
def emulating(cpu: AssumedCpu) -> Iterator[AssumedCpu]:
    """``with emulating(assumed_cpu()):`` computes, in this thread or task only, as on ``cpu``.

    A job sent to another process carries its client's ``assumed_cpu()`` and runs under it,
    so ``QCAL_CPU`` (or ``FBGEMM_ENABLE_INSTRUCTIONS``) on the client decides, not the
    worker's environment or hardware.
    """
    if not isinstance(cpu, AssumedCpu):
        raise TypeError(f"cpu must be an AssumedCpu (qcal.int8.assumed_cpu()), got {type(cpu).__name__}")
    token = _EMULATED.set(cpu)
    try:
        yield cpu
    finally:
        _EMULATED.reset(token)


def instruction_set(isa: str | None = None) -> InstructionSet:
    """The instruction set qcal assumes (``assumed_cpu(isa).isa``).

    Example:
        >>> instruction_set("avx512_vnni")
        'avx512_vnni'
    """
    return assumed_cpu(isa).isa


def saturates(family: KernelFamily, isa: str | AssumedCpu | None = None) -> bool:
    """Whether FBGEMM's ``family`` kernel sums int16 pairs with saturation on ``isa``.

    Args:
        family: "gemm" (linear), "pointwise", "im2col", "groupwise" or "depthwise".
        isa: an instruction set name, an ``AssumedCpu``, or None (``assumed_cpu()``).

    Example:
        >>> saturates("gemm", "avx512_vnni"), saturates("depthwise", "avx512_vnni")
        (False, True)
    """
    if family not in _FAMILIES:
        raise ValueError(f"unknown kernel family {family!r}; expected one of: {', '.join(get_args(KernelFamily))}")
    cpu = isa if isinstance(isa, AssumedCpu) else assumed_cpu(isa)
    if family == "depthwise":
        return True
    used = cpu.gemm_isa if family in _GEMM_FAMILIES else cpu.isa
    return used not in _VNNI_ISAS
