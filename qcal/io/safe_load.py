"""Load an untrusted checkpoint file as data, never as code.

Every file goes through ``torch.load(path, weights_only=True, map_location="cpu")``: torch's
restricted unpickler builds tensors (quantized ones included), dicts, lists, tuples, dtypes
and numbers, and refuses any other global, so a pickle whose ``__reduce__`` would run code
fails before anything runs.

One torch-owned object needs more: packed weights (``torch.ScriptObject`` of the classes
``quantized.LinearPackedParamsBase`` / ``Conv2dPackedParamsBase`` / ``Conv3dPackedParamsBase``)
appear in FX-converted state dicts when the model called ``F.linear`` / ``F.conv2d``
directly (the root buffer ``_packed_weight_0``). ``weights_only`` refuses ``torch.ScriptObject``.
Rather than allowlisting ``torch.ScriptObject`` itself (whose ``__setstate__`` would construct
any registered C++ class named in the file), we map that global, inside a scoped
``torch.serialization.safe_globals``, to :class:`PackedParamsState`: a plain record that keeps
the class name and the pickled state (tensors, already rebuilt by the restricted unpickler)
and refuses any class name outside the packed-params allowlist. No C++ object is created.

``safe_globals`` edits one process-wide allowlist (entering adds, leaving removes), so two
threads loading at once could see the mapping removed mid-load and refuse a good file;
``_LOAD_LOCK`` makes the scoped allowlist and the load one step.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["DEFAULT_MAX_BYTES", "PackedParamsState", "load_checkpoint"]

DEFAULT_MAX_BYTES = 256 * 2**20  # 256 MiB: far above any int8 checkpoint a page should show

# held around safe_globals + torch.load: the allowlist torch edits is global to the process
_LOAD_LOCK = threading.Lock()

PACKED_CLASSES: frozenset[str] = frozenset(
    f"__torch__.torch.classes.quantized.{name}"
    for name in ("LinearPackedParamsBase", "Conv2dPackedParamsBase", "Conv3dPackedParamsBase")
)


class PackedParamsState:
    """Stand-in for a pickled ``torch.ScriptObject`` of torch's quantized packed params.

    Attributes:
        class_name: the torchbind class, e.g. ``__torch__.torch.classes.quantized.LinearPackedParamsBase``.
        state: what its ``__getstate__`` saved: ``(weight, bias)`` for Linear,
            ``(version, [config, weight], [bias])`` for convolutions.
    """

    class_name: str = ""
    state: Any = None

    def __setstate__(self, value: Any) -> None:
        # torch.ScriptObject pickles as NEWOBJ + BUILD((state, qualified_class_name))
        if not (isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], str)):
            raise _Refused("a torch.ScriptObject with an unexpected pickled state")
        state, name = value
        if name not in PACKED_CLASSES:
            raise _Refused(f"torch.ScriptObject of class {name!r}")
        self.class_name, self.state = name, state

    @classmethod
    def from_script_object(cls, obj: torch.ScriptObject) -> PackedParamsState:
        """The same record for a live packed-params object (a state dict still in memory).

        Raises:
            ValueError: ``obj`` is not one of torch's quantized packed-params classes.
        """
        record = cls()
        try:
            record.__setstate__(obj.__reduce_ex__(2)[2])  # the state torch.save would write
        except (_Refused, RuntimeError, IndexError, TypeError) as err:
            raise ValueError(
                f"cannot read {obj!r}: {err}; expected quantized packed params"
            ) from None
        return record

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor in the saved state, in order (the weight first for Linear)."""
        found: list[torch.Tensor] = []

        def walk(value: Any) -> None:
            if isinstance(value, torch.Tensor):
                found.append(value)
            elif isinstance(value, (list, tuple)):
                for item in value:
                    walk(item)

        walk(self.state)
        return found

    def __repr__(self) -> str:
        return f"PackedParamsState({self.class_name.rsplit('.', 1)[-1]})"


class _Refused(Exception):
    """Raised inside the unpickler for content we will not build."""


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} bytes"


def load_checkpoint(path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """Load a torch checkpoint file safely: data only, bounded size, clear errors.

    Args:
        path: a file written by ``torch.save`` (e.g. a quantized model's ``state_dict()``).
        max_bytes: refuse files larger than this (default 256 MiB).

    Returns:
        Whatever the file holds, built only from tensors, containers, numbers, strings,
        dtypes and :class:`PackedParamsState` records.

    Raises:
        ValueError: the file is missing, too large, truncated, not a torch checkpoint, or
            holds objects other than data (a pickled model, custom classes, code).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such file: {str(path)!r}")
    size = path.stat().st_size
    if size > max_bytes:
        raise ValueError(
            f"{path.name} is {_size(size)}, above the limit of {_size(max_bytes)}; "
            "raise the limit (--max-mb on the CLI, max_bytes in Python) if you trust its size"
        )
    if size == 0:
        raise ValueError(f"{path.name} is empty (0 bytes): not a torch checkpoint")
    if zipfile.is_zipfile(path):
        _check_zip(path, max_bytes)
    try:
        with (
            _LOAD_LOCK,
            torch.serialization.safe_globals([(PackedParamsState, "torch.ScriptObject")]),
            warnings.catch_warnings(),
        ):
            # rebuilding quantized tensors goes through TypedStorage, which warns on every load
            warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
            return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:
        raise ValueError(_explain_load_error(path, err)) from None


def _check_zip(path: Path, max_bytes: int) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            # torch.save stores members uncompressed; a compressed one could expand without bound
            expanded = sum(info.file_size for info in archive.infolist())
            if expanded > max_bytes:
                raise ValueError(
                    f"{path.name} expands to {_size(expanded)}, above the limit of {_size(max_bytes)}"
                )
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise ValueError(
            f"{path.name} is a damaged zip archive ({err}); re-save or re-download it"
        ) from None
    if bad is not None:
        raise ValueError(f"{path.name} is damaged: member {bad!r} fails its CRC check; re-save it")


def _explain_load_error(path: Path, err: Exception) -> str:
    text = str(err)
    refused = next((e for e in _chain(err) if isinstance(e, _Refused)), None)
    if refused is not None:
        return (
            f"refusing {path.name}: it holds a {refused}, which is not quantized packed "
            "weights; qcal loads only tensors and torch's quantized packed params"
        )
    if ("weights only load failed" in text.lower() and "GLOBAL" not in text
            and not _looks_like_torch(path)):
        return f"{path.name} is not a torch checkpoint (neither a torch.save zip archive nor a pickle)"
    if "weights only load failed" in text.lower():
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f"it references {found.group(1)}" if found else "code or custom classes"
        return (
            f"refusing {path.name}: it holds pickled Python objects, not only tensors "
            f"({what}); files are loaded with torch.load(weights_only=True) and never "
            "executed. If this is a whole model saved with torch.save(model), save "
            "model.state_dict() instead"
        )
    first = text.split(". ")[0].strip() or type(err).__name__
    if any(s in text for s in ("central directory", "zip archive", "EOF", "truncated")) or _starts_zip(path):
        return f"{path.name} looks truncated or damaged: {first}"
    return (
        f"{path.name} is not a torch checkpoint (unpickling failed: {type(err).__name__} {first})"
    )


def _looks_like_torch(path: Path) -> bool:
    """A torch.save zip archive, or a legacy file starting with a pickle protocol header."""
    with path.open("rb") as f:
        head = f.read(4)
    return head.startswith(b"PK") or head[:1] == b"\x80"


def _starts_zip(path: Path) -> bool:
    """Starts like a zip archive (torch.save's format) even if its end is cut off."""
    with path.open("rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while err is not None and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen
