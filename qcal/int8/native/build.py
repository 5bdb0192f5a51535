"""Building and loading the native library: one build per instruction set (``VARIANTS``),
chosen at load (``variant()``), compiled with the system C compiler on first use and cached
(see the package doc, ``qcal/int8/native/__init__.py``)."""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

from qcal.int8.cpu.flags import cpu_flags
from qcal.paths import data_dir

__all__ = ["ENV_VAR", "ISA_VAR", "VARIANTS", "available", "load", "load_seconds", "loaded_variant", "native_vnni", "variant",
           "why_unavailable"]

ENV_VAR = "QCAL_NATIVE"
_SOURCE = Path(__file__).with_name("native_u8s8.c")
# -std=c11 and -ffp-contract=off: no multiply and add fused behind the epilogue's back;
# -fwrapv: the zero-point terms may pass int32 on the way to a result that fits (as the vector
# adds do, modulo 2^32), which C leaves undefined for the scalar tails otherwise
_FLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC", "-std=c11", "-ffp-contract=off", "-fwrapv")
#: The builds, each with its own flags, and the CPU flags (/proc/cpuinfo names) each needs; the
#: exact kernels of a VNNI build use vpdpbusd; the AVX-512-VNNI build also runs its exact GEMM's
#: store, the depthwise kernel and the requantization in 512-bit registers (AVX512 BW: byte and
#: word ops and masks), every other line is the AVX2 code of all builds.
VARIANTS = {
    "avx2": ((), ("avx2", "fma")),
    "avx512_vnni": (("-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512vnni", "-DQCAL_VNNI512"),
                    ("avx2", "fma", "avx512f", "avx512vl", "avx512bw", "avx512_vnni")),
    "avx_vnni": (("-mavxvnni", "-DQCAL_AVXVNNI"), ("avx2", "fma", "avx_vnni")),
}
#: ``QCAL_NATIVE_ISA=avx2`` (say) loads that build instead of the best this CPU runs
ISA_VAR = "QCAL_NATIVE_ISA"


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def variant() -> str:
    """The build to load: ``QCAL_NATIVE_ISA`` if set (refused at load if this CPU lacks
    it), else the best of ``VARIANTS`` this CPU has (AVX-512-VNNI, AVX-VNNI, then AVX2). The
    instructions follow the hardware; the arithmetic (saturating or exact) follows the CPU qcal
    emulates, so every build gives the same numbers."""
    forced = os.environ.get(ISA_VAR, "").strip().lower()
    if forced:
        return forced
    flags = cpu_flags()
    for name in ("avx512_vnni", "avx_vnni"):
        if set(VARIANTS[name][1]) <= flags:
            return name
    return "avx2"


def loaded_variant() -> str | None:
    """The build ``load()`` loaded (whatever ``QCAL_NATIVE_ISA`` says since), None without one."""
    return _LOADED["variant"] if available() else None


def native_vnni() -> bool:
    """Whether the loaded build sums exactly with ``vpdpbusd`` (a VNNI build)."""
    return loaded_variant() not in (None, "avx2")


def _build(compiler: str, name: str) -> Path:
    source = _SOURCE.read_bytes()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    flags = (*_FLAGS, *VARIANTS[name][0])
    key = hashlib.sha256(source + " ".join(flags).encode() + version.encode()).hexdigest()[:16]
    for folder in (data_dir() / "native", Path(tempfile.gettempdir()) / f"qcal-native-{os.getuid()}"):
        lib = folder / f"qcal_u8s8_{name}_{key}.so"
        if lib.is_file():
            return lib
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
            os.close(fd)
        except OSError:
            continue
        try:
            subprocess.run([compiler, *flags, str(_SOURCE), "-o", tmp, "-lm"], check=True, capture_output=True,
                           text=True, timeout=120)
            os.replace(tmp, lib)  # atomic: a concurrent build of the same key writes the same bytes
            return lib
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise OSError("no writable folder for the native library")


@functools.lru_cache(maxsize=1)
def load() -> tuple[ctypes.CDLL | None, str]:
    started = time.perf_counter()
    try:
        return _load_now()
    finally:
        _LOADED["seconds"] = time.perf_counter() - started


_LOADED: dict[str, float | str] = {}  # "seconds" the load took, the "variant" it loaded


def load_seconds() -> float | None:
    """How long finding (or building) and loading the library took in this process, None
    before the first use (a build is about a second; a cached library milliseconds)."""
    return _LOADED.get("seconds")


def _load_now() -> tuple[ctypes.CDLL | None, str]:
    if os.environ.get(ENV_VAR, "1") == "0":
        return None, f"{ENV_VAR}=0"
    if platform.machine().lower() not in ("x86_64", "amd64") or "avx2" not in cpu_flags():
        return None, "needs an x86-64 CPU with AVX2"
    name = variant()
    if name not in VARIANTS:
        return None, f"{ISA_VAR}={name} is not a build: {', '.join(VARIANTS)}"
    missing = sorted(set(VARIANTS[name][1]) - cpu_flags())
    if missing:
        return None, f"{ISA_VAR}={name} needs {', '.join(missing)}: this CPU has not"
    compiler = _compiler()
    if compiler is None:
        return None, "no C compiler (set CC, or install gcc)"
    try:
        lib = ctypes.CDLL(str(_build(compiler, name)))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        warnings.warn(f"qcal: native int8 kernel not built ({detail.strip()[:300]}); using the float engine",
                      RuntimeWarning, stacklevel=2)
        return None, f"build failed: {detail.strip()[:300]}"
    p = ctypes.c_void_p
    lib.qcal_pack.argtypes = [p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, p]
    lib.qcal_pack.restype = None
    lib.qcal_conv.argtypes = [p, p, p, p, p, p, ctypes.c_int, p, ctypes.c_int, ctypes.c_int]
    lib.qcal_conv.restype = ctypes.c_int
    lib.qcal_pack_dw.argtypes = [p, ctypes.c_int, ctypes.c_int, p]
    lib.qcal_pack_dw.restype = None
    lib.qcal_dw.argtypes = [p, p, p, p, p, p, ctypes.c_int, p, ctypes.c_int, ctypes.c_int]
    lib.qcal_dw.restype = ctypes.c_int
    lib.qcal_requant.argtypes = [p, ctypes.c_int, ctypes.c_int64, ctypes.c_int, p, p, ctypes.c_int, p, p, ctypes.c_int]
    lib.qcal_requant.restype = None
    lib.qcal_histc.argtypes = [p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_float, p]
    lib.qcal_histc.restype = None
    lib.qcal_maxpool.argtypes = [p, p, p, ctypes.c_int]
    lib.qcal_maxpool.restype = ctypes.c_int
    lib.qcal_pair_lookup.argtypes = [p, p, ctypes.c_int64, p, ctypes.c_int, p, ctypes.c_int]
    lib.qcal_pair_lookup.restype = None
    lib.qcal_quantize.argtypes = [p, ctypes.c_int64, ctypes.c_float, ctypes.c_float, ctypes.c_int, ctypes.c_int, p,
                                  ctypes.c_int, ctypes.c_int]
    lib.qcal_quantize.restype = None
    _LOADED["variant"] = name
    return lib, ""


def available() -> bool:
    """True when the native kernel is built and loaded here (see the module doc)."""
    return load()[0] is not None


def why_unavailable() -> str:
    """Why ``available()`` is False ("" when it is True)."""
    return load()[1]
