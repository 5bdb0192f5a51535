"""Which MLAS kernels onnxruntime's CPU EP runs on an x86 CPU (its "dispatch"), chosen on its own.

MLAS picks its kernels once, from cpuid (``onnxruntime/core/mlas/lib/platform.cpp``,
``MLAS_PLATFORM::MLAS_PLATFORM``), in this order, each step overriding the one before:

* AVX2 + FMA3: ``GemmU8S8KernelAvx2`` and ``ConvSymDispatchAvx2`` (``vpmaddubsw``: int16
  pairs saturate), ``GemmFloatKernelFma3``, ``ConvNchwcFloatKernelFma3`` / ``...NchwFloat...``
  / ``...PointwiseFloat...Fma3``, ``NchwcBlockSize = 8``;
* AVX-VNNI (cpuid 7.1 eax bit 4): ``GemmU8S8KernelAvxVnni``, ``ConvSymDispatchAvxVnni``
  (``vpdpbusd``: exact); the float kernels stay FMA3;
* AVX-512F (and the OS saving its state): ``GemmFloatKernelAvx512F``, the ``...Avx512F`` conv
  kernels and ``NchwcBlockSize = 16``; with BW/DQ/VL ("AVX512 core") ``GemmU8S8KernelAvx512Core``
  and ``ConvSymDispatchAvx512Core`` (``vpmaddubsw`` again: saturate, overriding AVX-VNNI), with
  AVX512-VNNI ``GemmU8S8KernelAvx512Vnni`` and ``ConvSymDispatchAvx512Vnni`` (exact);
* AMX-TILE + AMX-INT8 (and Linux granting the tile state, ``MlasInitAMX``):
  ``GemmU8S8DispatchAmx`` for the GEMMs (exact); ConvSym keeps the AVX512-VNNI kernels.

Depthwise int8 kernels widen to int16 first on every dispatch (never saturate).

===========  ====================  =====  ===============  ========================================
dispatch     int8 GEMM / ConvSym   sat.   float kernels    checked
===========  ====================  =====  ===============  ========================================
avx2         Avx2 / Avx2           yes    FMA3, block 8    hardware (AMD EPYC AVX2)
avx_vnni     AvxVnni / AvxVnni     no     FMA3, block 8    int8 source only (float: avx2's kernels)
avx512       Avx512Core / same     yes    AVX512F, 16      int8 source only (float: checked on the Xeon)
avx512_vnni  Avx512Vnni / same     no     AVX512F, 16      int8 source only (float: checked on the Xeon)
amx          Amx / Avx512Vnni      no     AVX512F, 16      hardware (Xeon AMX: int8, SGEMM, NCHWc conv)
===========  ====================  =====  ===============  ========================================

``ort_dispatch_report()`` returns the same rows. A CPU with AVX-512F but without BW (Xeon Phi)
is treated as ``avx512``: its int8 kernels are the AVX2 ones, which saturate the same pairs.
CPUs without AVX2/FMA3 (SSE/AVX kernels) are not modelled.

Which dispatch qcal predicts: the CPU set by ``emulating(cpu)`` (a Dask job computes with its
client's; ``AssumedCpu.mlas`` carries the client's dispatch, None follows its FBGEMM ``isa``),
else ``QCAL_ORT_CPU`` (``amx``, ``avx512_vnni``, ``avx512`` or ``avx512f``, ``avx_vnni``,
``avx2``), else ``QCAL_CPU``'s FBGEMM set (avx2 -> avx2, avx512(_ymm) -> avx512,
avx512_vnni(_ymm) -> avx512_vnni: it cannot say AMX or AVX-VNNI), else this machine's
``/proc/cpuinfo``, else avx2. ``QCAL_ORT_CPU`` changes the ort flavour only, never FBGEMM's.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from qcal.int8.cpu.flags import cpu_flags

__all__ = ["DISPATCHES", "FROM_FBGEMM", "ORT_ENV_VAR", "MlasDispatch", "mlas_dispatch_from_flags",
           "ort_dispatch_name", "ort_dispatch_report", "ort_machine_dispatch", "parse_ort_cpu"]

#: The environment variable naming the MLAS dispatch the ort flavour predicts.
ORT_ENV_VAR = "QCAL_ORT_CPU"

_EPYC, _XEON = "hardware (AMD EPYC AVX2)", "hardware (Xeon AMX: int8, SGEMM and NCHWc conv)"
# the AVX512F float kernels (SGEMM, NCHWc conv, block 16) are the same on every AVX-512F dispatch
_AVX512F_FLOAT = "float kernels AVX512F: checked on the Xeon AMX"


@dataclass(frozen=True)
class MlasDispatch:
    """One MLAS dispatch: its kernels and how qcal's model of them was checked.

    Attributes:
        name: the ``QCAL_ORT_CPU`` name.
        int8: the label ``ort_instruction_set`` reports ("AVX2 (no VNNI)", "AMX", ...).
        int8_kernels: MLAS's U8S8 GEMM kernel / ConvSym dispatch.
        saturates: whether those kernels saturate int16 pairs (``vpmaddubsw``).
        float_kernels: "FMA3" or "AVX512F" (SGEMM and NCHWc conv kernels).
        nchwc_block: ``MlasNchwcGetBlockSize()`` (8 or 16).
        checked: how qcal checked the model of this dispatch.
        float_conv_checked: the NCHWc float conv model was checked on hardware with this block.
    """

    name: str
    int8: str
    int8_kernels: str
    saturates: bool
    float_kernels: str
    nchwc_block: int
    checked: str
    float_conv_checked: bool


DISPATCHES: dict[str, MlasDispatch] = {d.name: d for d in (
    MlasDispatch("avx2", "AVX2 (no VNNI)", "GemmU8S8KernelAvx2 / ConvSymDispatchAvx2", True, "FMA3", 8, _EPYC, True),
    MlasDispatch("avx_vnni", "AVX-VNNI", "GemmU8S8KernelAvxVnni / ConvSymDispatchAvxVnni", False, "FMA3", 8,
                 "int8 source only; float kernels are avx2's FMA3 ones, checked there", True),
    MlasDispatch("avx512", "AVX512 (no VNNI)", "GemmU8S8KernelAvx512Core / ConvSymDispatchAvx512Core", True,
                 "AVX512F", 16, f"int8 source only; {_AVX512F_FLOAT}", True),
    MlasDispatch("avx512_vnni", "AVX512-VNNI", "GemmU8S8KernelAvx512Vnni / ConvSymDispatchAvx512Vnni", False,
                 "AVX512F", 16, f"int8 source only; {_AVX512F_FLOAT}", True),
    MlasDispatch("amx", "AMX", "GemmU8S8DispatchAmx / ConvSymDispatchAvx512Vnni", False, "AVX512F", 16, _XEON, True),
)}
_ALIASES = {"avx512f": "avx512", "avx512_core": "avx512", "avxvnni": "avx_vnni", "avx512vnni": "avx512_vnni",
            "amx_int8": "amx"}
# QCAL_CPU's names (FBGEMM's instruction sets, ``qcal.int8.cpu.isa``) -> MLAS's dispatch
FROM_FBGEMM = {"avx2": "avx2", "avx512": "avx512", "avx512_ymm": "avx512",
                "avx512_vnni": "avx512_vnni", "avx512_vnni_ymm": "avx512_vnni"}
_AVX512_CORE = frozenset({"avx512f", "avx512bw", "avx512dq", "avx512vl"})  # cpuid 7 ebx & 0xC0020000


def parse_ort_cpu(value: str, where: str = ORT_ENV_VAR) -> str:
    """A dispatch name, case and ``-``/``_`` insensitive (``avx512f`` is ``avx512``).

    Raises:
        ValueError: ``value`` names no MLAS dispatch (the message lists them).

    Example:
        >>> parse_ort_cpu(" AVX512F "), parse_ort_cpu("avx-vnni")
        ('avx512', 'avx_vnni')
    """
    name = value.strip().lower().replace("-", "_")
    name = _ALIASES.get(name, name)
    if name not in DISPATCHES:
        raise ValueError(f"{where} {value!r} is not an MLAS dispatch; expected one of: amx, avx512_vnni, "
                         "avx512 (or avx512f: AVX-512 without VNNI), avx_vnni, avx2")
    return name


def mlas_dispatch_from_flags(flags: Iterable[str]) -> str | None:
    """MLAS's dispatch (platform.cpp) from Linux ``/proc/cpuinfo`` flags; None without AVX2+FMA3.

    Example:
        >>> mlas_dispatch_from_flags({"avx2", "fma", "avx_vnni"})
        'avx_vnni'
    """
    f = frozenset(flags)
    if not {"avx2", "fma"} <= f:
        return None
    if {"amx_tile", "amx_int8"} <= f:
        return "amx"
    if f >= _AVX512_CORE and "avx512_vnni" in f:
        return "avx512_vnni"
    if "avx512f" in f:  # AVX512 core, or AVX-512F alone (AVX2 int8 kernels: the same saturating pairs)
        return "avx512"
    return "avx_vnni" if "avx_vnni" in f else "avx2"


def ort_dispatch_name(source: str) -> str | None:
    """The MLAS dispatch ``assumed_cpu()`` records (``AssumedCpu.mlas``): ``QCAL_ORT_CPU`` if
    set, else this machine's when ``source`` is "/proc/cpuinfo", else None (follow FBGEMM's set)."""
    env = os.environ.get(ORT_ENV_VAR, "").strip()
    if env:
        return parse_ort_cpu(env)
    return mlas_dispatch_from_flags(cpu_flags()) if source == "/proc/cpuinfo" else None


def ort_machine_dispatch() -> MlasDispatch | None:
    """The dispatch this machine's onnxruntime really runs (its flags, whatever the environment
    says), or None off Linux x86 or without AVX2+FMA3."""
    name = mlas_dispatch_from_flags(cpu_flags())
    return None if name is None else DISPATCHES[name]


def ort_dispatch_report() -> list[tuple[str, str, bool, str, str]]:
    """One row per dispatch: (dispatch, int8 kernels, saturates, float kernels, checked).

    Example:
        >>> ort_dispatch_report()[0][:3]
        ('avx2', 'GemmU8S8KernelAvx2 / ConvSymDispatchAvx2', True)
    """
    return [(d.name, d.int8_kernels, d.saturates,
             f"SGEMM {d.float_kernels}, NCHWc {d.float_kernels} (block {d.nchwc_block})", d.checked)
            for d in DISPATCHES.values()]
