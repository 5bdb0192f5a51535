"""Quantization schemes: how one tensor is quantized (QSpec), a model (Scheme), each layer (Recipe).

A ``QSpec`` names the integer dtype, the qscheme (per tensor or per channel, affine or
symmetric), the range estimator ("observer") and its options. A ``Scheme`` pairs a weight
spec with an activation spec. ``SCHEMES`` holds the presets. A ``Recipe`` picks a scheme
(or fp32) per layer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

__all__ = [
    "BACKENDS",
    "DTYPES",
    "MODES",
    "OBSERVERS",
    "QSCHEMES",
    "SCHEMES",
    "Backend",
    "Mode",
    "QSpec",
    "Recipe",
    "Scheme",
    "check_backend",
    "check_backends",
    "check_choice",
    "check_mode",
    "check_runnable",
    "resolve_scheme",
    "resolve_scheme_or_recipe",
]

Dtype = Literal["quint8", "qint8"]
QScheme = Literal[
    "per_tensor_affine", "per_tensor_symmetric", "per_channel_affine", "per_channel_symmetric"
]
Observer = Literal["minmax", "moving_average", "histogram", "percentile", "entropy", "mse"]
Backend = Literal["fbgemm", "qnnpack", "onnx", "q31", "x86", "ort"]  # x86: torch's x86 engine (FBGEMM or oneDNN per layer); ort: onnxruntime CPU
Mode = Literal["auto", "graph", "modules"]  # calibrate: torch.fx graph, module swap, or graph falling back

DTYPES: tuple[str, ...] = get_args(Dtype)
QSCHEMES: tuple[str, ...] = get_args(QScheme)
OBSERVERS: tuple[str, ...] = get_args(Observer)
BACKENDS: tuple[str, ...] = get_args(Backend)
MODES: tuple[str, ...] = get_args(Mode)


def check_choice(what: str, value: Any, choices: tuple[str, ...]) -> None:
    """The one message style for a closed choice: ``unknown <what> <value>; expected one of: ...``.

    Raises:
        ValueError: ``value`` is not in ``choices``.
    """
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; expected one of: {', '.join(choices)}")


def check_backend(backend: Any) -> Backend:
    """The one backend validator: returns ``backend`` when it is one of ``BACKENDS``.

    Raises:
        ValueError: for any other value (the message lists the valid names).
    """
    check_choice("backend", backend, BACKENDS)
    return backend


def check_backends(backends: Iterable[Any]) -> list[Backend]:
    """Each name through ``check_backend``; returns them as a list."""
    return [check_backend(b) for b in backends]


def check_mode(mode: Any) -> Mode:
    """The one calibration-mode validator: returns ``mode`` when it is one of ``MODES``.

    Raises:
        ValueError: for any other value (the message lists the valid modes).
    """
    check_choice("mode", mode, MODES)
    return mode


@dataclass(frozen=True)
class QSpec:
    """How one tensor is quantized.

    Args:
        dtype: "quint8" (0..255) or "qint8" (-128..127).
        qscheme: per tensor or per channel, affine (zero point fitted to the range) or
            symmetric (zero point fixed: 0 for qint8, 128 for quint8).
        observer: the range estimator that turns statistics into (min, max).
        reduce_range: halve the integer range (quint8 0..127, qint8 -64..63), as FBGEMM's
            default activations do so that int16 pair sums cannot saturate on CPUs
            without VNNI.
        ch_axis: the channel axis for per-channel schemes (0: output channels of a weight).
        options: observer options as a sorted tuple of (name, value) pairs, e.g.
            ``(("percentile", 99.99),)``; a dict is accepted and normalised.

    Example:
        >>> QSpec("qint8", "per_channel_symmetric").per_channel
        True
    """

    dtype: Dtype = "quint8"
    qscheme: QScheme = "per_tensor_affine"
    observer: Observer = "minmax"
    reduce_range: bool = False
    ch_axis: int = 0
    options: tuple[tuple[str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        check_choice("dtype", self.dtype, DTYPES)
        check_choice("qscheme", self.qscheme, QSCHEMES)
        check_choice("observer", self.observer, OBSERVERS)
        opts = self.options
        if isinstance(opts, dict):
            opts = tuple(opts.items())
        try:
            opts = tuple(sorted((str(k), v) for k, v in opts))
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"options must be a dict or pairs of (name, value), got {self.options!r}"
            ) from err
        object.__setattr__(self, "options", opts)
        object.__setattr__(self, "reduce_range", bool(self.reduce_range))
        if self.observer == "histogram" and self.per_channel:
            raise ValueError(
                "the histogram observer exists per tensor only (as in torch); "
                "use minmax, moving_average, percentile, entropy or mse per channel"
            )

    @property
    def per_channel(self) -> bool:
        """True for per-channel qschemes."""
        return self.qscheme.startswith("per_channel")

    @property
    def symmetric(self) -> bool:
        """True for symmetric qschemes (fixed zero point)."""
        return self.qscheme.endswith("symmetric")

    @property
    def signed(self) -> bool:
        """True for qint8."""
        return self.dtype == "qint8"

    def option(self, name: str, default: Any = None) -> Any:
        """The value of observer option ``name``, or ``default``."""
        return dict(self.options).get(name, default)

    def label(self) -> str:
        """A short human-readable label, e.g. ``qint8 per_channel_symmetric minmax``."""
        extra = " reduce_range" if self.reduce_range else ""
        opts = "".join(f" {k}={v}" for k, v in self.options)
        return f"{self.dtype} {self.qscheme} {self.observer}{extra}{opts}"


@dataclass(frozen=True)
class Scheme:
    """A model-level quantization scheme: one spec for weights, one for activations."""

    name: str
    weight: QSpec
    activation: QSpec
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.weight, QSpec) or not isinstance(self.activation, QSpec):
            raise TypeError("Scheme.weight and Scheme.activation must be QSpec instances")
        if self.activation.per_channel:
            raise ValueError(
                f"scheme {self.name!r}: activations are quantized per tensor by every backend; "
                f"got {self.activation.qscheme}"
            )


_ACT = QSpec("quint8", "per_tensor_affine", "minmax", reduce_range=True)

_SHARED_ACT_NOTE = (
    " Activations (all four generic presets share them, so a comparison isolates the weight "
    "scheme) are quint8 affine with reduce_range: 0..127, a zero point fitted so that the "
    "observed range maps onto it, which keeps FBGEMM's int16 pair sums from saturating."
)

SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in [
        Scheme(
            "per_tensor_affine",
            QSpec("qint8", "per_tensor_affine", "minmax"),
            _ACT,
            "One scale and one zero point for the whole weight tensor, fitted to its min and "
            "max (the range is widened to include 0). The zero point is whatever integer maps "
            "0.0 exactly, so it is usually not 0: the range is used fully even when the "
            "weights are lopsided, at the price of a zero-point correction in every "
            "accumulation." + _SHARED_ACT_NOTE,
        ),
        Scheme(
            "per_tensor_symmetric",
            QSpec("qint8", "per_tensor_symmetric", "minmax"),
            _ACT,
            "One scale for the whole weight tensor, scale = max|w| / 127.5, and zero point "
            "fixed at 0: a symmetric qint8 range is centred on 0, so 0.0 maps to the integer "
            "0 and the kernel needs no weight zero-point correction. (A symmetric quint8 "
            "tensor would get zero point 128, the middle of 0..255.) Torch stores such "
            "weights as per_tensor_affine with zero point 0: symmetric is a way of choosing "
            "qparams, not a storage format." + _SHARED_ACT_NOTE,
        ),
        Scheme(
            "per_channel_affine",
            QSpec("qint8", "per_channel_affine", "minmax", ch_axis=0),
            _ACT,
            "A scale and a zero point for each output channel, fitted to that channel's own "
            "min and max. Channels with small weights keep their resolution instead of being "
            "rounded to a few levels by the largest channel's scale; zero points vary per "
            "channel." + _SHARED_ACT_NOTE,
        ),
        Scheme(
            "per_channel_symmetric",
            QSpec("qint8", "per_channel_symmetric", "minmax", ch_axis=0),
            _ACT,
            "A scale for each output channel, max|w_channel| / 127.5, and zero point 0 for "
            "every channel (symmetric qint8 is centred on 0). This is what FBGEMM's default "
            "uses for weights: per-channel resolution without zero-point corrections."
            + _SHARED_ACT_NOTE,
        ),
        Scheme(
            "fbgemm_default",
            QSpec("qint8", "per_channel_symmetric", "minmax", ch_axis=0),
            QSpec("quint8", "per_tensor_affine", "histogram", reduce_range=True),
            "Torch's default qconfig for the fbgemm/x86 engine: per-channel symmetric qint8 "
            "weights (zero point 0 in every channel) and quint8 activations whose range is "
            "chosen by the histogram observer's L2-error search, with reduce_range (0..127). "
            "The reduced range exists because FBGEMM's AVX2 kernel adds pairs of u8*s8 "
            "products in int16, which saturates when activations exceed 127; output zero "
            "points therefore never exceed 127.",
        ),
        Scheme(
            "qnnpack_default",
            QSpec("qint8", "per_tensor_symmetric", "minmax"),
            QSpec("quint8", "per_tensor_affine", "histogram", reduce_range=False),
            "Torch's default qconfig for the qnnpack engine (mobile): one symmetric scale per "
            "weight tensor (zero point 0) and full-range quint8 activations (0..255) chosen "
            "by the histogram observer. QNNPACK accumulates in int32 without int16 pairs, so "
            "it can use the full range; output zero points above 127 are a sign of it.",
        ),
    ]
}


def resolve_scheme(scheme: str | Scheme) -> Scheme:
    """A preset by name, or the Scheme itself.

    Raises:
        ValueError: for an unknown preset name (the message lists the valid ones).
        TypeError: for anything that is neither a name nor a Scheme.
    """
    if isinstance(scheme, Scheme):
        return scheme
    if isinstance(scheme, str):
        if scheme not in SCHEMES:
            raise ValueError(
                f"unknown scheme {scheme!r}; expected one of: {', '.join(SCHEMES)} "
                "(or a qcal.Scheme)"
            )
        return SCHEMES[scheme]
    raise TypeError(f"scheme must be a preset name or a qcal.Scheme, got {type(scheme).__name__}")


_TORCH_ENGINES = tuple(b for b in BACKENDS if b in ("fbgemm", "qnnpack", "x86"))
# (backend, role, dtype) -> why the backend cannot run it. Checked before any calibration, so
# a built scheme fails with the reason instead of a dtype error deep inside a kernel.
_UNRUNNABLE: dict[tuple[str, str, str], str] = {
    **{(b, "activation", "qint8"): f"{b}'s kernels take quint8 activations only (torch's "
       f"quantized::conv2d/linear refuse qint8 inputs under the {b} engine)" for b in _TORCH_ENGINES},
    **{(b, "activation", "qint8"): "qcal's whole-model pipeline carries activations as quint8 "
       "(the int8 kernels take qint8 codes, the model wiring does not)" for b in ("onnx", "q31")},
    **{(b, "weight", "quint8"): f"{b}'s kernels take qint8 weights only (torch packs weights "
       f"as qint8 for the {b} engine)" for b in _TORCH_ENGINES},
}


def check_runnable(scheme: Scheme, backend: str) -> None:
    """Refuse a (scheme, backend) pair the backend cannot run, saying why.

    Raises:
        ValueError: e.g. qint8 activations on fbgemm, naming the scheme, the setting and
            the reason.
    """
    check_backend(backend)
    for role, spec in (("weight", scheme.weight), ("activation", scheme.activation)):
        reason = _UNRUNNABLE.get((backend, role, spec.dtype))
        if reason:
            raise ValueError(f"scheme {scheme.name!r} cannot run on {backend}: {spec.dtype} "
                             f"{role}s: {reason}; use {'quint8' if spec.dtype == 'qint8' else 'qint8'} "
                             f"{role}s{' or the onnx backend' if role == 'weight' else ''}")


FP32 = "fp32"  # how a recipe file spells "keep this layer in fp32" (TOML has no null)


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

    Example:
        >>> r = Recipe("per_tensor_affine", {"fc": None, "features.0": "per_channel_symmetric"})
        >>> r.scheme_for("fc") is None, r.scheme_for("features.0").name
        (True, 'per_channel_symmetric')
    """

    default: Scheme | str | None = None
    layers: Any = ()
    name: str = ""

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
        return f"Recipe(name={self.name!r}, default={data['default']!r}, layers={data['layers']!r})"

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
        return out

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Recipe:
        """The inverse of ``to_data``.

        Raises:
            ValueError: unknown fields or schemes.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"a recipe is a mapping with default, layers and name, got {type(data).__name__}")
        unknown = set(data) - {"name", "default", "layers"}
        if unknown:
            raise ValueError(f"unknown recipe fields {sorted(unknown)}; expected name, default, layers")
        layers = data.get("layers", {})
        if not isinstance(layers, Mapping):
            raise ValueError(f"recipe layers must be a table {{layer: scheme}}, got {layers!r}")
        return cls(_scheme_from_data(data.get("default"), "recipe default"),
                   {k: _scheme_from_data(v, f"recipe layer {k!r}") for k, v in layers.items()},
                   str(data.get("name", "")))


def resolve_scheme_or_recipe(value: str | Scheme | Recipe) -> Scheme | Recipe:
    """A Recipe as is, else ``resolve_scheme(value)``."""
    return value if isinstance(value, Recipe) else resolve_scheme(value)
