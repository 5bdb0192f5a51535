"""This machine's CPU flags, and whether FBGEMM would see VNNI on it.

FBGEMM (and ATen's ``is_cpu_support_vnni``) ask cpuinfo for **AVX512-VNNI** only; AVX-VNNI
without AVX-512 (``avx_vnni``) runs FBGEMM's AVX2 kernels, which saturate int16 pairs.
``torch.backends.cpu.get_cpu_capability()`` does not reveal VNNI, so the flags are read from
``/proc/cpuinfo`` (Linux). The instruction set qcal *assumes* (which ``QCAL_CPU`` can
override) is ``qcal.int8.cpu.isa.assumed_cpu``.
"""

from __future__ import annotations

import functools
from pathlib import Path

__all__ = ["VNNI_FLAGS", "cpu_flags", "has_vnni"]

#: /proc/cpuinfo flags FBGEMM counts as VNNI (``cpuinfo_has_x86_avx512vnni``); not ``avx_vnni``.
VNNI_FLAGS: frozenset[str] = frozenset({"avx512_vnni"})


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU flags of the first processor in ``/proc/cpuinfo`` (empty when unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def has_vnni() -> bool:
    """True when this machine's CPU has AVX512-VNNI, the VNNI FBGEMM and oneDNN dispatch on.

    AVX-VNNI alone (``avx_vnni``) does not count: FBGEMM runs its AVX2 kernels there.

    Example:
        >>> has_vnni() in (True, False)
        True
    """
    return bool(cpu_flags() & VNNI_FLAGS)
