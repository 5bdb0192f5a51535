"""Recipe files: TOML or JSON with the fields of ``Recipe.to_data`` (name, default, layers, repairs).

```toml
name = "recommended"
default = "per_tensor_affine"     # a preset name, or "fp32"

[layers]
"features.3.0" = "per_channel_symmetric"
fc = "fp32"
```
Custom (non-preset) schemes are tables of Scheme fields; JSON holds them as objects.
Files are untrusted: size-capped, parsed as data only.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

from qcal.recipes import Recipe

__all__ = ["MAX_RECIPE_BYTES", "read_recipe", "recipe_text", "write_recipe"]

MAX_RECIPE_BYTES = 1 * 2**20  # a recipe names a few hundred layers at most


def read_recipe(path: str | os.PathLike[str]) -> Recipe:
    """The Recipe in a .toml or .json file.

    Raises:
        ValueError: a file too big, not TOML/JSON, or not a recipe (the message says which).
        OSError: an unreadable file.
    """
    path = Path(path)
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise ValueError(f"{path}: {path.stat().st_size} bytes; a recipe file is at most {MAX_RECIPE_BYTES}")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"{path}: not a {'JSON' if path.suffix.lower() == '.json' else 'TOML'} recipe file: {err}") from err
    try:
        return Recipe.from_data(data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from err


def _toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)  # strings and numbers: JSON's spelling is valid TOML


_RANGE_FIELDS = ("quant_min", "quant_max")


def _unset_ranges_dropped(value: Any) -> Any:
    """A custom scheme's data without quant_min/quant_max left at None (the dtype's range):
    TOML has no null, and files without a range stay as they were before the fields existed."""
    if not isinstance(value, dict):
        return value
    parts = {p: {k: v for k, v in value[p].items() if not (k in _RANGE_FIELDS and v is None)}
             for p in ("weight", "activation")}
    return {**value, **parts}


def recipe_text(recipe: Recipe, fmt: str = "toml") -> str:
    """The recipe as TOML or JSON text (a spec's quant_min/quant_max only when given)."""
    data = recipe.to_data()
    data["default"] = _unset_ranges_dropped(data["default"])
    data["layers"] = {k: _unset_ranges_dropped(v) for k, v in data["layers"].items()}
    if fmt == "json":
        return json.dumps(data, indent=1) + "\n"
    lines = [f"name = {_toml_value(data['name'])}", f"default = {_toml_value(data['default'])}", "", "[layers]"]
    lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in data["layers"].items()]
    for repair in data.get("repairs", []):  # settings only: applying the recipe recomputes the values
        lines += ["", "[[repairs]]", *(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in repair.items())]
    return "\n".join(lines) + "\n"


def write_recipe(recipe: Recipe, path: str | os.PathLike[str]) -> Path:
    """Write ``recipe`` as TOML (.toml) or JSON (.json); returns the path."""
    path = Path(path)
    fmt = "json" if path.suffix.lower() == ".json" else "toml"
    path.write_text(recipe_text(recipe, fmt), encoding="utf-8")
    return path
