"""A team's own models, registered by the server owner: a TOML file and entry points.

``$QCAL_MODELS`` names a TOML file::

    [models.teamnet]
    factory = "teamzoo:build"     # module:callable returning an nn.Module (server-owner code)
    weights = "w.pt"              # optional state_dict: .pt (weights_only) or .safetensors
    calib = "calib.npz"           # calibration inputs: array "x" (or the only array)
    eval = "eval.npz"             # evaluation inputs "x", optional labels "y"
    description = "one line for the sidebar"

Relative paths resolve against the TOML's folder. The factory's module is looked for in
that folder first and loaded from there by path; the folder is appended to ``sys.path``
(never prepended) so the module's own imports of its siblings work while installed
packages keep their names. Python packages register models through the entry-point group
``qcal.models``: each entry point is a callable returning the same fields as a dict, paths
absolute or relative to the package's folder.

A bad entry (missing file, bad factory, a factory that raises, data that does not fit the
model) becomes a ``RegistryProblem`` naming it; the other models stay usable. Only the
server owner's files register code: nothing uploaded through the dashboard does.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import inspect
import os
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from qcal.io.tensor_files import load_tensors
from qcal.io.user_models import import_module, load_user_model
from qcal.zoo import datasets, zoo

__all__ = ["ENTRY_POINT_GROUP", "NamedModel", "RegisteredModel", "RegistryProblem", "catalogue", "check", "input_shape_of",
           "load_named", "registered"]

ENTRY_POINT_GROUP = "qcal.models"
_REQUIRED = ("factory", "calib", "eval")
_OPTIONAL = ("weights", "description")


@dataclass(frozen=True)
class RegisteredModel:
    """One registered model: where its code, weights and data are.

    Attributes:
        name: the key under ``[models.NAME]`` (or the entry point's name).
        factory: "module:callable".
        folder: where the factory's module is looked for first (the TOML's folder, or the
            entry point's package folder).
        calib, eval: tensor files (.npz/.pt/.safetensors), read as data only.
        weights: an optional state_dict file.
        description: one line for the sidebar and ``--list-models``.
        source: the TOML file or "entry point <name>", for messages.
    """

    name: str
    factory: str
    folder: Path
    calib: Path
    eval: Path
    weights: Path | None = None
    description: str = ""
    source: str = ""

    def load(self) -> nn.Module:
        """The model in eval mode, weights loaded (as data).

        Raises:
            ValueError: naming this entry, for a module that does not import, a missing
                callable, a factory that raises or weights that do not fit.
        """
        try:
            return load_user_model(self.factory, self.weights, importer=self._import)
        except (ValueError, TypeError) as err:
            raise ValueError(f"registered model {self.name!r} ({self.source}): {err}") from err

    def data(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """(calibration inputs, evaluation inputs, evaluation labels or None)."""
        try:
            calib, _ = load_tensors(self.calib)
            x, y = load_tensors(self.eval)
        except ValueError as err:
            raise ValueError(f"registered model {self.name!r} ({self.source}): {err}") from err
        return calib, x, y

    def _import(self, module_name: str) -> ModuleType:
        return _import_from(self.folder, module_name)


@dataclass(frozen=True)
class RegistryProblem:
    """A registry entry (or a whole registry) that cannot be used, and why."""

    source: str
    name: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.source}{f' [{self.name}]' if self.name else ''}: {self.message}"


def _import_from(folder: Path, module_name: str) -> ModuleType:
    """``module_name`` from ``folder`` if it is there (by path, under a private name so it
    shadows nothing), else the installed module; ``folder`` is appended to sys.path."""
    if str(folder) not in sys.path:
        sys.path.append(str(folder))  # appended: installed packages keep precedence
    top, _, rest = module_name.partition(".")
    spec = importlib.machinery.PathFinder.find_spec(top, [str(folder)])
    if spec is None:
        return import_module(module_name)
    private = f"_qcal_registered_{hashlib.sha1(str(folder).encode()).hexdigest()[:10]}_{top}"
    module = sys.modules.get(private)
    if module is None:
        spec = importlib.util.spec_from_file_location(
            private, spec.origin, submodule_search_locations=spec.submodule_search_locations)
        module = importlib.util.module_from_spec(spec)
        sys.modules[private] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[private]
            raise
    return importlib.import_module(f"{private}.{rest}") if rest else module


def _entry(name: str, fields: Any, folder: Path, source: str) -> RegisteredModel:
    if not isinstance(fields, dict):
        raise ValueError(f"expected a table of fields, got {type(fields).__name__}")
    missing = [k for k in _REQUIRED if not fields.get(k)]
    unknown = [k for k in fields if k not in _REQUIRED + _OPTIONAL]
    if missing or unknown:
        raise ValueError(f"{'missing ' + ', '.join(missing) if missing else ''}"
                         f"{'; ' if missing and unknown else ''}"
                         f"{'unknown field(s) ' + ', '.join(unknown) if unknown else ''}; "
                         f"fields: {', '.join(_REQUIRED)} (required), {', '.join(_OPTIONAL)}")
    if not isinstance(fields["factory"], str) or fields["factory"].count(":") != 1:
        raise ValueError(f"factory {fields['factory']!r} must look like 'module:callable'")
    paths = {}
    for key in ("calib", "eval", "weights"):
        if fields.get(key):
            path = (folder / str(fields[key])).resolve()
            if not path.is_file():
                raise ValueError(f"{key} file {path} does not exist")
            paths[key] = path
    return RegisteredModel(name, fields["factory"], folder, paths["calib"], paths["eval"],
                           paths.get("weights"), str(fields.get("description", "")), source)


def _from_toml(path: Path) -> tuple[list[RegisteredModel], list[RegistryProblem]]:
    source = str(path)
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except FileNotFoundError:
        return [], [RegistryProblem(source, None, "QCAL_MODELS names a file that does not exist")]
    except (OSError, tomllib.TOMLDecodeError) as err:
        return [], [RegistryProblem(source, None, f"not a readable TOML file: {err}")]
    models = table.get("models")
    if not isinstance(models, dict):
        return [], [RegistryProblem(source, None, "no [models.NAME] tables")]
    found, problems = [], []
    for name, fields in models.items():
        try:
            found.append(_entry(name, fields, path.parent.resolve(), source))
        except ValueError as err:
            problems.append(RegistryProblem(source, name, str(err)))
    return found, problems


def _from_entry_points() -> tuple[list[RegisteredModel], list[RegistryProblem]]:
    found, problems = [], []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        source = f"entry point {ep.value}"
        try:
            provider = ep.load()
            folder = Path(inspect.getfile(provider)).resolve().parent
            found.append(_entry(ep.name, provider(), folder, source))
        except Exception as err:  # a broken plug-in must not hide the others
            problems.append(RegistryProblem(source, ep.name, f"{type(err).__name__}: {err}"))
    return found, problems


def registered(toml: str | os.PathLike[str] | None = None
               ) -> tuple[dict[str, RegisteredModel], list[RegistryProblem]]:
    """The registered models by name, and the problems found while reading the registries.

    Args:
        toml: the TOML file; default ``$QCAL_MODELS`` (none when unset).

    Returns:
        (models, problems). A name registered twice, or equal to a zoo model's, is a
        problem: the first registration (the zoo before the TOML before entry points) wins.
    """
    path = toml if toml is not None else os.environ.get("QCAL_MODELS")
    found, problems = _from_toml(Path(path).expanduser()) if path else ([], [])
    more, more_problems = _from_entry_points()
    models: dict[str, RegisteredModel] = {}
    for entry in [*found, *more]:
        if entry.name in models or entry.name in zoo.names():
            problems.append(RegistryProblem(entry.source, entry.name,
                                            "the name is taken (by the zoo or an earlier entry)"))
        else:
            models[entry.name] = entry
    return models, problems + more_problems


@torch.no_grad()
def check(entry: RegisteredModel, samples: int = 2) -> None:
    """Build the model, read its data and run a few samples of each file through it.

    Raises:
        ValueError: naming the entry and what failed (factory, weights, files, shapes).
    """
    model = entry.load()
    calib, x, y = entry.data()
    for what, inputs in (("calib", calib), ("eval", x)):
        try:
            out = model(inputs[:samples])
        except Exception as err:  # the user's forward failed on their data: name the shapes
            raise ValueError(f"registered model {entry.name!r} ({entry.source}): its {what} "
                             f"inputs of shape {tuple(inputs.shape)} do not fit the model: "
                             f"{type(err).__name__}: {err}") from err
        if what == "eval" and y is not None and isinstance(out, Tensor) and out.dim() >= 2 \
                and int(y.max()) >= out.shape[1]:
            raise ValueError(f"registered model {entry.name!r} ({entry.source}): label "
                             f"{int(y.max())} is out of range for {out.shape[1]} outputs")


@dataclass(frozen=True)
class NamedModel:
    """A zoo or registered model with the data qcal calibrates and evaluates it on."""

    name: str
    model: nn.Module
    calib: Tensor
    eval_x: Tensor
    eval_y: Tensor | None
    description: str
    source: str


def input_shape_of(name: str) -> tuple[int, ...] | None:
    """One sample's input shape (no batch dimension) of a zoo or registered model; None if unknown."""
    if name in zoo.names():
        return tuple(zoo.info(name).input_shape)
    entry = registered()[0].get(name)
    return None if entry is None else tuple(entry.data()[0].shape[1:])


def load_named(name: str, progress: Any = None) -> NamedModel:
    """A zoo model (digits splits) or a registered one (its files), by name.

    Raises:
        ValueError: for an unknown name (listing the valid ones and any registry problems)
            or a registered entry that cannot be loaded.
    """
    if name in zoo.names():
        model = zoo.load(name, progress=progress)
        splits = datasets.digits_splits()
        x, y = splits.test
        return NamedModel(name, model, splits.calib[0], x, y, zoo.info(name).description,
                          f"zoo:{name}")
    models, problems = registered()
    if name not in models:
        hint = f" (registry problems: {'; '.join(map(str, problems))})" if problems else ""
        raise ValueError(f"unknown zoo model {name!r}; valid names: "
                         f"{', '.join([*zoo.names(), *models])}{hint}")
    entry = models[name]
    calib, x, y = entry.data()
    return NamedModel(name, entry.load(), calib, x, y, entry.description,
                      f"registered:{name} ({entry.source})")


def catalogue(*, check_models: bool = True) -> tuple[pd.DataFrame, list[RegistryProblem]]:
    """Every model by name (zoo, then registered) and every registry problem.

    Args:
        check_models: build each registered model and run a few samples of its files
            through it (``check``); an entry that fails moves to the problems.

    Returns:
        (frame with columns name, source, description; problems).
    """
    models, problems = registered()
    rows = [{"name": n, "source": "zoo", "description": m.description} for n, m in zoo.MODELS.items()]
    for name, entry in models.items():
        try:
            if check_models:
                check(entry)
        except ValueError as err:
            problems.append(RegistryProblem(entry.source, name, str(err)))
            continue
        rows.append({"name": name, "source": entry.source, "description": entry.description})
    return pd.DataFrame(rows, columns=["name", "source", "description"]), problems
