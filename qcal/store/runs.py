"""A saved run: its tidy frames plus the metadata that says where they came from.

``Run`` is what ``Store.load`` returns; ``RunInfo`` is the typed view of the metadata keys
qcal itself writes, and ``environment()`` collects the machine-dependent ones (torch version,
CPU capability, VNNI, the x86 instruction set qcal emulated) that make two runs' integer results
comparable or not.
"""

from __future__ import annotations

import functools
import json
import platform
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qcal import __version__
from qcal.store.schema import StoreError

__all__ = ["Run", "RunInfo", "encode_meta", "environment", "utc_now"]

_VNNI_FLAGS = ("avx512_vnni",)  # what FBGEMM and oneDNN dispatch on; AVX-VNNI alone does not count


def utc_now() -> str:
    """The current time as a UTC ISO 8601 string, e.g. ``2026-11-27T11:40:14.123456+00:00``."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{value!r} of type {type(value).__name__} is not JSON-like")


def encode_meta(meta: Mapping[str, Any]) -> str:
    """Run metadata as canonical JSON (sorted keys, ASCII): the text a store keeps and digests.

    Values come back from JSON as themselves, except tuples (as lists) and numpy values (as
    Python numbers and lists).

    Raises:
        StoreError: a key is not a string or a value is not JSON-like (numpy numbers are accepted).
    """
    if not all(isinstance(k, str) for k in meta):
        raise StoreError(f"run metadata keys must be strings; got {sorted(map(repr, meta))}")
    try:
        return json.dumps(dict(meta), sort_keys=True, ensure_ascii=True, default=_plain)
    except (TypeError, ValueError) as err:
        raise StoreError(f"run metadata must be JSON-like (str, numbers, bool, None, lists, dicts): {err}") from err


def _cpu_flags() -> frozenset[str] | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: the flags are unknown, not absent
        return None
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


@functools.cache
def _environment() -> tuple[tuple[str, Any], ...]:
    # torch imported here, not at the top: `qcal runs list` and the store pages need no torch
    import torch

    from qcal.int8.backends.ort import ort_environment

    flags = _cpu_flags()
    return (
        ("torch_version", torch.__version__),
        ("cpu_capability", torch.backends.cpu.get_cpu_capability()),
        ("vnni", None if flags is None else any(f in flags for f in _VNNI_FLAGS)),
        ("qcal_version", __version__),
        ("python_version", platform.python_version()),
        ("machine", platform.machine()),
        *ort_environment().items(),
    )


def environment() -> dict[str, Any]:
    """The machine-dependent metadata of a run.

    Returns:
        A new dict with ``torch_version``, ``cpu_capability``
        (``torch.backends.cpu.get_cpu_capability()``, e.g. ``"AVX512"``), ``vnni`` (True when
        /proc/cpuinfo lists ``avx512_vnni``, None when the flags are unreadable),
        ``instruction_set`` (the x86 ISA qcal's FBGEMM emulation assumed, ``QCAL_CPU`` or
        detected), ``qcal_version``, ``python_version``, ``machine``, and for the ort
        flavour ``onnxruntime_version``, ``ort_instruction_set`` and ``ort_u8s8_saturates``.
    """
    from qcal.int8.cpu.isa import instruction_set  # here, like torch above: readers need no torch

    return {**dict(_environment()), "instruction_set": instruction_set()}


@dataclass(frozen=True)
class RunInfo:
    """The metadata keys qcal writes for a run; ``Run.meta`` may hold more.

    Attributes:
        model: model name, e.g. ``"digits_mlp"``.
        model_source: how to rebuild it: a zoo name or ``"module:factory"``.
        data_fingerprint: a hash of the calibration/evaluation data.
        data_description: a human description of that data.
        schemes: the scheme names compared.
        backends: the backends they ran on.
        title: free-text title or note.
        created: UTC ISO time of saving (filled by ``Store.save`` when empty).
        torch_version, cpu_capability, vnni, instruction_set, qcal_version: see ``environment()``.
    """

    model: str = ""
    model_source: str = ""
    data_fingerprint: str = ""
    data_description: str = ""
    schemes: tuple[str, ...] = ()
    backends: tuple[str, ...] = ()
    title: str = ""
    created: str = ""
    torch_version: str = ""
    cpu_capability: str = ""
    vnni: bool | None = None
    instruction_set: str = ""
    qcal_version: str = ""

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> RunInfo:
        """The known keys of ``meta`` (missing ones take their defaults; others are ignored)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in meta.items() if k in known and v is not None}
        for key in ("schemes", "backends"):
            if key in values:
                values[key] = tuple(values[key]) if isinstance(values[key], list | tuple) else (str(values[key]),)
        return cls(**values)

    def to_meta(self) -> dict[str, Any]:
        """A JSON-ready dict (lists for schemes and backends), empty fields left out."""
        meta = asdict(self)
        meta["schemes"], meta["backends"] = list(self.schemes), list(self.backends)
        return {k: v for k, v in meta.items() if v not in ("", None, [])}


@dataclass(frozen=True, eq=False)
class Run:
    """A saved run: ``id``, ``meta`` (a JSON-like dict) and named tidy ``frames``.

    Frames are also attributes: ``run.summary`` is ``run.frames["summary"]``.

    Attributes:
        id: the store's short id, e.g. ``"3f2a9c0b1d4e"``.
        meta: metadata as saved (see ``RunInfo`` for the keys qcal writes).
        frames: frame name -> DataFrame, in the order they were saved.
    """

    id: str
    meta: dict[str, Any]
    frames: dict[str, pd.DataFrame]

    def __getattr__(self, name: str) -> pd.DataFrame:
        frames = self.__dict__.get("frames")  # absent while copy/pickle rebuild the object
        if frames is not None and name in frames:
            return frames[name]
        raise AttributeError(
            f"run {self.__dict__.get('id')!r} has no attribute or frame {name!r}; "
            f"its frames are {sorted(frames or ())}"
        )

    @property
    def info(self) -> RunInfo:
        """The typed view of ``meta``."""
        return RunInfo.from_meta(self.meta)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={len(v)}×{v.shape[1]}" for k, v in self.frames.items())
        return f"Run(id={self.id!r}, model={self.meta.get('model', '')!r}, created={self.meta.get('created', '')!r}, frames: {shapes})"
