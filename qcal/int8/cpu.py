"""What this CPU's integer instructions do: VNNI detection from the kernel's CPU flags.

FBGEMM's u8 x s8 GEMM kernels sum adjacent products in int16 (``vpmaddubsw``, saturating)
on AVX2/AVX-512 CPUs without VNNI, and in int32 (``vpdpbusd``, exact) on CPUs with it.
``torch.backends.cpu.get_cpu_capability()`` does not reveal VNNI, so the flags are read from
``/proc/cpuinfo`` (Linux). Other systems report no VNNI, the conservative answer for
FBGEMM emulation (it then saturates, as on a plain AVX2 CPU).
"""

from __future__ import annotations

import functools
from pathlib import Path

__all__ = ["VNNI_FLAGS", "cpu_flags", "has_vnni"]

#: /proc/cpuinfo flags that announce a VNNI dot-product instruction (AVX-512 or AVX encoding).
VNNI_FLAGS: frozenset[str] = frozenset({"avx512_vnni", "avx_vnni"})


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
    """True when the CPU has AVX512-VNNI or AVX-VNNI (FBGEMM's GEMM then does not saturate).

    Example:
        >>> has_vnni() in (True, False)
        True
    """
    return bool(cpu_flags() & VNNI_FLAGS)
