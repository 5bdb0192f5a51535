"""Recipes: a scheme (or fp32) per layer, as data and as files' contents.

A ``Recipe`` names a default scheme and per-layer overrides (None: keep the layer fp32), is
hashable, and reads and writes plain data (``to_data`` / ``from_data``: presets by name,
custom schemes as their QSpec fields, fp32 as "fp32"). Files: ``qcal.io.recipe_files``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from qcal.schemes import SCHEMES, QSpec, Scheme, resolve_scheme

__all__ = ["FP32", "REPAIR_PARAMETERS", "Recipe", "resolve_scheme_or_recipe"]

FP32 = "fp32"  # how a recipe file spells "keep this layer in fp32" (TOML has no null)
#: the repairs a recipe may record (``qcal.repair.apply_recipe`` applies them) and their settings
REPAIR_PARAMETERS: dict[str, tuple[str, ...]] = {
    "equalize": ("relu6", "absorb", "sweeps"),
    "correct_bias": ("method",),  # "empirical" (from the calibration data) or "analytic"
    "adaround": ("iterations", "samples", "seed", "reg", "batch_size"),
}


def _repairs(value: Any) -> tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]:
    """Repairs as ((name, ((setting, value), ...)), ...), each name known and once."""
    items = [(r, {}) if isinstance(r, str) else (r[0], r[1]) if isinstance(r, tuple) else
             (r.get("name"), {k: v for k, v in r.items() if k != "name"}) for r in value or ()]
    out = []
    for name, params in items:
        if name not in REPAIR_PARAMETERS:
            raise ValueError(f"unknown repair {name!r}; expected one of: {', '.join(REPAIR_PARAMETERS)}")
        params = dict(params)
        bad = sorted(set(params) - set(REPAIR_PARAMETERS[name]))
        if bad:
            raise ValueError(f"repair {name!r} has no setting {bad[0]!r}; its settings: "
                             f"{', '.join(REPAIR_PARAMETERS[name])}")
        out.append((name, tuple(sorted(params.items()))))
    if len({n for n, _ in out}) < len(out):
        raise ValueError(f"a recipe names a repair twice: {[n for n, _ in out]}")
    return tuple(out)


def _scheme_or_none(value: str | Scheme | None, where: str) -> Scheme | None:
    if value is None or value == FP32:
        return None
    try:
        return resolve_scheme(value)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{where}: {err} (or None / {FP32!r} to keep fp32)") from None


def _scheme_to_data(scheme: Scheme | None) -> str | dict[str, Any]:
    if scheme is None:
        return FP32
    if SCHEMES.get(scheme.name) == scheme:
        return scheme.name
    out = asdict(scheme)
    for part in ("weight", "activation"):
        out[part]["options"] = dict(out[part]["options"])
        for key in ("quant_min", "quant_max"):  # unset ranges stay out: names and stored data unchanged
            if out[part][key] is None:
                del out[part][key]
    return out


def _scheme_from_data(value: Any, where: str) -> Scheme | None:
    if isinstance(value, Mapping):
        try:
            return Scheme(str(value["name"]), QSpec(**value["weight"]), QSpec(**value["activation"]),
                          str(value.get("description", "")))
        except (KeyError, TypeError) as err:
            raise ValueError(f"{where}: a scheme needs name, weight and activation (QSpec fields); {err}") from None
    return _scheme_or_none(value, where)


@dataclass(frozen=True)
class Recipe:
    """A per-layer choice of scheme: ``default`` for every layer not named in ``layers``.

    Args:
        default: a preset name, a Scheme, or None (fp32) for the layers not listed.
        layers: {layer name: preset name | Scheme | None}; None keeps that layer in fp32.
            Names are the module names ``qm.layers()`` shows (a fused conv-bn-relu takes
            the conv's name); a name is matched to a layer when the recipe meets a model,
            and a name that is no quantizable layer is refused there with the valid names.
            Stored as a sorted tuple of pairs, so that recipes are hashable.
        name: shown in frames; derived from the contents when empty.
        repairs: the repairs to apply, as settings, never learned values: names from
            ``REPAIR_PARAMETERS`` with their settings (``[("equalize", {"relu6": "bounded"}),
            "correct_bias"]``). ``qcal.repair.apply_recipe`` recomputes them deterministically
            (equalize, then AdaRound or calibration, then bias correction); ``qcal.calibrate``
            refuses a recipe that records repairs rather than ignore them.

    Example:
        >>> r = Recipe("per_tensor_affine", {"fc": None, "features.0": "per_channel_symmetric"})
        >>> r.scheme_for("fc") is None, r.scheme_for("features.0").name
        (True, 'per_channel_symmetric')
    """

    default: Scheme | str | None = None
    layers: Any = ()
    name: str = ""
    repairs: Any = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "default", _scheme_or_none(self.default, "Recipe default"))
        pairs = self.layers.items() if isinstance(self.layers, Mapping) else self.layers
        try:
            layers = tuple(sorted((str(k), _scheme_or_none(v, f"Recipe layer {k!r}")) for k, v in pairs))
        except (TypeError, ValueError) as err:
            if "Recipe layer" in str(err):
                raise
            raise TypeError(f"Recipe layers must be a dict {{layer name: scheme | None}}, got {self.layers!r}") from err
        if len({k for k, _ in layers}) != len(layers):
            raise ValueError(f"Recipe names a layer twice: {[k for k, _ in layers]}")
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "repairs", _repairs(self.repairs))
        if not self.name:
            object.__setattr__(self, "name", self._derived_name())
        dtypes = {s.activation.dtype for s in self.schemes()}
        if len(dtypes) > 1:
            raise ValueError(f"recipe {self.name!r} mixes activation dtypes {sorted(dtypes)}; "
                             "one dtype per model is supported (as torch's converted models need)")

    def _derived_name(self) -> str:
        digest = hashlib.sha1(repr(self.to_data(named=False)).encode()).hexdigest()[:6]
        base = self.default.name if self.default is not None else FP32
        return f"{base}+{len(self.layers)}-{digest}"

    def __repr__(self) -> str:
        data = self.to_data(named=False)
        extra = f", repairs={data['repairs']!r}" if self.repairs else ""
        return f"Recipe(name={self.name!r}, default={data['default']!r}, layers={data['layers']!r}{extra})"

    def scheme_for(self, layer_name: str) -> Scheme | None:
        """The scheme of a layer (None: fp32): the entry for the layer or its nearest named
        ancestor module, else ``default`` (torch's rule for module-name qconfigs)."""
        table = dict(self.layers)
        name = layer_name
        while True:
            if name in table:
                return table[name]
            if not name:
                return self.default
            name = name.rpartition(".")[0]

    def schemes(self) -> list[Scheme]:
        """The distinct schemes the recipe uses (default first)."""
        return list(dict.fromkeys(s for s in [self.default, *(v for _, v in self.layers)] if s is not None))

    def fp32_layers(self, layer_names: Iterable[str]) -> list[str]:
        """The layers of ``layer_names`` this recipe keeps in fp32."""
        return [n for n in layer_names if self.scheme_for(n) is None]

    def check_layers(self, valid: Iterable[str], not_layers: Mapping[str, str] | None = None) -> None:
        """Refuse names that are no quantizable layer of the model.

        Args:
            valid: the model's quantizable layer names.
            not_layers: {module name: type name} of other modules (BatchNorm, ReLU, ...), for
                a message that says why such a name does not count.

        Raises:
            ValueError: naming the unknown names and listing the valid ones.
        """
        valid = list(valid)
        bad = [k for k, _ in self.layers if k not in valid]
        if bad:
            why = [f"{k} ({not_layers[k]}: folded or fused into a conv/linear, name that layer instead)"
                   for k in bad if not_layers and k in not_layers]
            raise ValueError(f"recipe {self.name!r} names {bad}, which are not quantizable layers of the model"
                             + (f" ({'; '.join(why)})" if why else "")
                             + f"; valid layer names: {', '.join(valid)}")

    def to_data(self, *, named: bool = True) -> dict[str, Any]:
        """Plain data (for JSON/TOML files): presets by name, fp32 as "fp32"."""
        out: dict[str, Any] = {"name": self.name} if named else {}
        out["default"] = _scheme_to_data(self.default)
        out["layers"] = {k: _scheme_to_data(v) for k, v in self.layers}
        if self.repairs:  # recipes without repairs keep their data, files and derived names
            out["repairs"] = [{"name": n, **dict(params)} for n, params in self.repairs]
        return out

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Recipe:
        """The inverse of ``to_data``.

        Raises:
            ValueError: unknown fields or schemes.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"a recipe is a mapping with default, layers and name, got {type(data).__name__}")
        unknown = set(data) - {"name", "default", "layers", "repairs"}
        if unknown:
            raise ValueError(f"unknown recipe fields {sorted(unknown)}; expected name, default, layers, repairs")
        repairs = data.get("repairs", [])
        if not isinstance(repairs, list) or not all(isinstance(r, Mapping) for r in repairs):
            raise ValueError(f"recipe repairs must be a list of tables {{name = ..., setting = ...}}, got {repairs!r}")
        layers = data.get("layers", {})
        if not isinstance(layers, Mapping):
            raise ValueError(f"recipe layers must be a table {{layer: scheme}}, got {layers!r}")
        return cls(_scheme_from_data(data.get("default"), "recipe default"),
                   {k: _scheme_from_data(v, f"recipe layer {k!r}") for k, v in layers.items()},
                   str(data.get("name", "")), repairs)


def resolve_scheme_or_recipe(value: str | Scheme | Recipe) -> Scheme | Recipe:
    """A Recipe as is, else ``resolve_scheme(value)``."""
    return value if isinstance(value, Recipe) else resolve_scheme(value)
