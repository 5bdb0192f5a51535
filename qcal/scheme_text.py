"""A compact text form of a Scheme, for the CLI, URLs and saved runs.

Grammar (whitespace around tokens is ignored; field order is free)::

    scheme   := preset-name | field (";" field)*
    field    := "name=" NAME | "w=" spec | "a=" spec
    spec     := qscheme "/" observer [":" P] ("/" modifier)*
    modifier := "dtype=" ("qint8" | "quint8") | "reduce_range=" ("true" | "false")
              | "bins=" INT | "ch_axis=" INT | "averaging_constant=" FLOAT
              | "quant_min=" SIGNED_INT | "quant_max=" SIGNED_INT

``w=`` (weights) and ``a=`` (activations) are both required. ``:P`` is the percentile
observer's p (default 99.99) and is refused on other observers. ``quant_min`` and
``quant_max`` (together) set the codes' range, e.g. ``/quant_min=-127/quant_max=127``.
Defaults, which ``format_scheme`` leaves out: weights qint8, reduce_range=false, ch_axis=0;
activations quint8, reduce_range=true (the presets' activations, safe on FBGEMM's int16 pair
sums); no quant_min/quant_max (the dtype's range).
Without ``name=`` the scheme is named by its own text. Example::

    name=p9999;w=per_channel_symmetric/minmax;a=per_tensor_affine/percentile:99.99
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from qcal.schemes import DTYPES, OBSERVERS, QSCHEMES, SCHEMES, QSpec, Scheme

__all__ = ["build_scheme", "format_scheme", "format_spec", "parse_scheme", "parse_spec", "run_schemes",
           "scheme_from_text"]

_ROLE_DEFAULTS: dict[str, dict[str, Any]] = {
    "w": {"dtype": "qint8", "reduce_range": False, "ch_axis": 0},
    "a": {"dtype": "quint8", "reduce_range": True, "ch_axis": 0},
}
_ROLE_NAMES = {"w": "weight", "a": "activation"}
_FIELDS = ("name", "w", "a")
_BOOLS = {"true": True, "false": False}
_NAME_FORBIDDEN = set(";=/")


def _fail(field: str, value: str, accepted: str) -> ValueError:
    return ValueError(f"scheme text: bad {field} {value!r}; accepted: {accepted}")


def _int(field: str, low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise _fail(field, text, f"a whole number >= {low}")
        return value
    return parse


def _signed(field: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise _fail(field, text, "a whole number, e.g. -127") from None
    return parse


def _float(field: str, low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not low < value <= high:
            raise _fail(field, text, f"a number in ({low:g}, {high:g}]")
        return value
    return parse


def _choice(field: str, choices: Any) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if text not in choices:
            raise _fail(field, text, ", ".join(choices))
        return choices[text] if isinstance(choices, dict) else text
    return parse


# modifier -> (parser, which observers take it; None: every observer)
_MODIFIERS: dict[str, tuple[Callable[[str], Any], tuple[str, ...] | None]] = {
    "dtype": (_choice("dtype", DTYPES), None),
    "reduce_range": (_choice("reduce_range", _BOOLS), None),
    "ch_axis": (_int("ch_axis", 0), None),
    "quant_min": (_signed("quant_min"), None),
    "quant_max": (_signed("quant_max"), None),
    "bins": (_int("bins", 2), ("histogram", "percentile", "entropy", "mse")),
    "averaging_constant": (_float("averaging_constant", 0.0, 1.0), ("moving_average",)),
}
_OPTION_MODIFIERS = ("bins", "averaging_constant")


def _observer(text: str, where: str) -> tuple[str, dict[str, Any]]:
    observer, colon, arg = (t.strip() for t in text.partition(":"))
    if observer not in OBSERVERS:
        raise _fail(f"{where} observer", observer, ", ".join(OBSERVERS))
    if not colon:
        return observer, {"percentile": 99.99} if observer == "percentile" else {}
    if observer != "percentile":
        raise _fail(f"{where} ':' argument", f"{observer}:{arg}",
                    "':P' after percentile only (e.g. percentile:99.9)")
    return observer, {"percentile": _float(f"{where} percentile p", 50.0, 100.0)(arg)}


def parse_spec(text: str, role: str = "a") -> QSpec:
    """One tensor's spec from ``qscheme/observer[:P][/modifier...]``.

    Args:
        text: e.g. ``"per_tensor_affine/percentile:99.9/bins=1024"``.
        role: "w" (weights) or "a" (activations): picks the defaults.

    Raises:
        ValueError: naming the bad field, its value and what is accepted.
    """
    where = _ROLE_NAMES[role]
    parts = [p.strip() for p in text.split("/")]
    if len(parts) < 2:
        raise _fail(f"{where} spec", text, "qscheme/observer[:P][/modifier=value...], "
                    "e.g. per_channel_symmetric/minmax")
    qscheme = parts[0]
    if qscheme not in QSCHEMES:
        raise _fail(f"{where} qscheme", qscheme, ", ".join(QSCHEMES))
    observer, options = _observer(parts[1], where)
    fields = dict(_ROLE_DEFAULTS[role])
    for modifier in parts[2:]:
        key, eq, value = (t.strip() for t in modifier.partition("="))
        if key not in _MODIFIERS or not eq:
            raise _fail(f"{where} modifier", modifier,
                        ", ".join(f"{k}=..." for k in _MODIFIERS))
        parse, observers = _MODIFIERS[key]
        if observers is not None and observer not in observers:
            raise _fail(f"{where} modifier", modifier,
                        f"{key} on the {', '.join(observers)} observer(s) only")
        (options if key in _OPTION_MODIFIERS else fields)[key] = parse(value)
    try:
        spec = QSpec(qscheme=qscheme, observer=observer, options=options, **fields)
        from qcal.observers import make_observer

        make_observer(spec)  # the observer's own refusals (symmetric quint8 + reduce_range)
    except ValueError as err:
        raise ValueError(f"scheme text: {where} spec {text!r}: {err}") from err
    return spec


def _fields(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        key, eq, value = (t.strip() for t in part.partition("="))
        if key not in _FIELDS or not eq:
            raise _fail("field", part, "name=NAME, w=SPEC, a=SPEC separated by ';'")
        if key in out:
            raise _fail("field", part, f"each of {', '.join(_FIELDS)} once")
        out[key] = value
    return out


def parse_scheme(text: str) -> Scheme:
    """A Scheme from its text form, or the preset of that name.

    Example:
        >>> s = parse_scheme("w=per_channel_symmetric/minmax;a=per_tensor_affine/percentile:99.99")
        >>> s.activation.option("percentile")
        99.99

    Raises:
        ValueError: naming the bad field, its value and what is accepted.
        TypeError: for a non-string.
    """
    if not isinstance(text, str):
        raise TypeError(f"scheme text must be a string, got {type(text).__name__}")
    if text.strip() in SCHEMES:
        return SCHEMES[text.strip()]
    fields = _fields(text)
    for role in ("w", "a"):
        if role not in fields:
            raise ValueError(
                f"scheme text {text!r}: missing field {role}= ({_ROLE_NAMES[role]} spec); a preset "
                f"name ({', '.join(SCHEMES)}) or e.g. "
                "w=per_channel_symmetric/minmax;a=per_tensor_affine/percentile:99.99")
    weight, activation = parse_spec(fields["w"], "w"), parse_spec(fields["a"], "a")
    body = f"w={format_spec(weight, 'w')};a={format_spec(activation, 'a')}"
    name = fields.get("name", body)
    if "name" in fields and (not name or _NAME_FORBIDDEN & set(name)):
        raise _fail("name", name, "a non-empty name without ';', '=' or '/'")
    if name in SCHEMES and (SCHEMES[name].weight, SCHEMES[name].activation) != (weight, activation):
        raise _fail("name", name, "a name that is not a preset's (the presets keep their definitions)")
    try:
        return Scheme(name, weight, activation, f"built: {body}")
    except ValueError as err:
        raise ValueError(f"scheme text {text!r}: {err}") from err


def format_spec(spec: QSpec, role: str = "a") -> str:
    """The text form of one spec; fields equal to the role's defaults are left out."""
    observer = spec.observer
    options = dict(spec.options)
    if observer == "percentile":
        observer += f":{options.pop('percentile', 99.99)!r}"
    parts = [spec.qscheme, observer]
    defaults = _ROLE_DEFAULTS[role]
    for key in ("dtype", "reduce_range", "ch_axis"):
        value = getattr(spec, key)
        if value != defaults[key]:
            parts.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
    if spec.custom_range:
        parts += [f"quant_min={spec.quant_min}", f"quant_max={spec.quant_max}"]
    parts.extend(f"{k}={v!r}" for k, v in sorted(options.items()))
    return "/".join(parts)


def format_scheme(scheme: Scheme) -> str:
    """The text form ``parse_scheme`` reads back to an equal Scheme (a preset: its name).

    Raises:
        ValueError: for a scheme name the text form cannot carry (';', '=' or '/').
    """
    if SCHEMES.get(scheme.name) == scheme:
        return scheme.name
    body = f"w={format_spec(scheme.weight, 'w')};a={format_spec(scheme.activation, 'a')}"
    if scheme.name == body:
        return body
    if not scheme.name or _NAME_FORBIDDEN & set(scheme.name):
        raise _fail("name", scheme.name, "a non-empty name without ';', '=' or '/'")
    return f"name={scheme.name};{body}"


def scheme_from_text(text: str | Scheme) -> Scheme:
    """``parse_scheme`` for strings; a Scheme passes through (for mixed lists)."""
    return text if isinstance(text, Scheme) else parse_scheme(text)


def run_schemes(meta: dict[str, Any]) -> dict[str, Scheme]:
    """The Schemes a saved run was computed with, by name, rebuilt from its metadata.

    Runs saved before text forms were recorded name presets only; a name that is neither
    recorded nor a preset is left out.
    """
    texts = meta.get("scheme_texts") or {}
    out: dict[str, Scheme] = {}
    for name in meta.get("schemes") or list(texts):
        if name in texts:
            out[name] = parse_scheme(texts[name])
        elif name in SCHEMES:
            out[name] = SCHEMES[name]
    return out


def build_scheme(name: str, weight: dict[str, Any], activation: dict[str, Any],
                 *, percentile: float = 99.99, bins: int | None = None) -> Scheme:
    """A Scheme from a form's choices, through the text form (same checks and messages as
    the CLI's ``--scheme``).

    Args:
        name: the scheme's name ("" names it by its text).
        weight, activation: "qscheme", "observer" and optionally "dtype", "reduce_range",
            "quant_min" and "quant_max" (None: the dtype's range).
        percentile: p for a percentile observer.
        bins: histogram bins for the observers that take them (None: their default).
    """
    def spec(fields: dict[str, Any], role: str) -> str:
        observer = fields["observer"] + (f":{percentile!r}" if fields["observer"] == "percentile" else "")
        parts = [fields["qscheme"], observer]
        for key in ("dtype", "reduce_range"):
            if key in fields and fields[key] != _ROLE_DEFAULTS[role][key]:
                parts.append(f"{key}={str(fields[key]).lower()}")
        parts += [f"{key}={fields[key]}" for key in ("quant_min", "quant_max") if fields.get(key) is not None]
        if bins is not None and fields["observer"] in _MODIFIERS["bins"][1]:
            parts.append(f"bins={bins}")
        return "/".join(parts)

    head = f"name={name.strip()};" if name.strip() else ""
    return parse_scheme(f"{head}w={spec(weight, 'w')};a={spec(activation, 'a')}")
