"""Users' own models, named by an import path to code they already run: "module:factory".

qcal never builds a model from an uploaded file: the architecture comes from importable
code, and only the weights may come from a file, read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import importlib
import pickle
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from qcal.io.safe_load import MAX_FILE_BYTES, check_size

__all__ = ["import_module", "load_user_model"]

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")  # common checkpoint layouts


def load_user_model(spec: str, state_dict_path: str | Path | None = None, *,
                    importer: Callable[[str], ModuleType] | None = None,
                    max_bytes: int = MAX_FILE_BYTES) -> nn.Module:
    """Build a model from ``"package.module:factory"`` and optionally load its weights.

    ``factory`` is an attribute of the module (dots allowed: ``"mod:Class.build"``) called
    with no arguments; a class counts as a factory. The weights file holds a state_dict,
    or a checkpoint dict with it under "state_dict", "model_state_dict" or "model".

    Args:
        spec: "module:factory", e.g. "my_project.models:make_net".
        state_dict_path: optional ``.pt``/``.pth`` file, read with ``weights_only=True``,
            or ``.safetensors``.
        importer: imports the module (default ``import_module``; the registry of team
            models passes one that looks in the registry's folder first).
        max_bytes: refuse a weights file (or a zip that expands) beyond this size.

    Returns:
        The model in eval mode.

    Raises:
        ValueError: malformed spec, module not found, missing attribute, a factory that
            raised, unreadable weights or mismatched state_dict keys/shapes (a few are listed).
        TypeError: the factory is not callable or does not return an nn.Module.
    """
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise ValueError(f"model spec {spec!r} must look like 'package.module:factory'")
    module = (importer or import_module)(module_name)
    factory = module
    for part in attr_path.split("."):
        if not hasattr(factory, part):
            public = sorted(n for n in dir(factory) if not n.startswith("_") and callable(getattr(factory, n)))
            raise ValueError(
                f"{spec!r}: {getattr(factory, '__name__', module_name)!r} has no attribute {part!r}; "
                f"callables there include: {', '.join(public[:12]) or '(none)'}"
            )
        factory = getattr(factory, part)
    if not callable(factory):
        raise TypeError(f"{spec!r}: {attr_path!r} is a {type(factory).__name__}, not a callable factory")
    try:
        model = factory()
    except Exception as err:  # the user's code failed: say where, keep their message
        raise ValueError(f"{spec!r}: calling {attr_path}() failed with {type(err).__name__}: {err} "
                         "(the factory must build the model with no arguments)") from err
    if not isinstance(model, nn.Module):
        raise TypeError(f"{spec!r}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
    if state_dict_path is not None:
        _load_weights(model, Path(state_dict_path), max_bytes)
    model.eval()  # not `return model.eval()`: torchao's eval for exported PT2E graphs returns None
    return model


def import_module(module_name: str) -> ModuleType:
    """``importlib.import_module`` with errors that say where the module is looked for."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and module_name.startswith(e.name):
            raise ValueError(
                f"module {module_name!r} not found; it must be importable from here "
                f"(installed, or on sys.path / PYTHONPATH; run from the folder that contains it)"
            ) from e
        raise ValueError(f"module {module_name!r} failed to import: it needs {e.name!r}, which is not installed") from e


def _load_weights(model: nn.Module, path: Path, max_bytes: int) -> None:
    if not path.is_file():
        raise ValueError(f"{path}: no such state_dict file")
    check_size(path, max_bytes)
    try:
        loaded = _read_safetensors(path) if path.suffix.lower() == ".safetensors" else \
            torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{path}: refused to load: it holds Python objects other than tensors; save "
            f"model.state_dict() (torch's restricted weights_only unpickler builds tensors only)"
        ) from e
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: truncated or corrupt torch file ({str(e).splitlines()[0]})") from e
    state = loaded
    for key in _WRAPPER_KEYS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: holds a {type(state).__name__}, expected a state_dict (a dict of tensors)")
    _check_keys(model, state, path)
    model.load_state_dict(state)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except SafetensorError as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from e


def _check_keys(model: nn.Module, state: Mapping, path: Path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:4])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(map(str, unexpected[:4]))})")
        if shapes:
            parts.append(f"{len(shapes)} with other shapes (e.g. {'; '.join(shapes[:3])})")
        raise ValueError(f"{path}: state_dict does not match the model: " + "; ".join(parts))
