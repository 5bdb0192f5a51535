"""Quantization schemes: how one tensor is quantized (QSpec), a model (Scheme).

A ``QSpec`` names the integer dtype (optionally a narrower range of codes, torch's
quant_min/quant_max), the qscheme (per tensor or per channel, affine or symmetric), the
range estimator ("observer") and its options. A ``Scheme`` pairs a weight
spec with an activation spec. ``SCHEMES`` holds the presets. The closed choices (backend,
mode, dtype, qscheme, observer) are Literals here, each with its one validator. A scheme per
layer is a ``Recipe`` (``recipes.py``); which backend runs which scheme is ``runnable.py``.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass, field
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
    "Scheme",
    "check_backend",
    "check_backends",
    "check_choice",
    "check_mode",
    "code_range",
    "resolve_scheme",
]

Dtype = Literal["quint8", "qint8"]
QScheme = Literal[
    "per_tensor_affine", "per_tensor_symmetric", "per_channel_affine", "per_channel_symmetric"
]
Observer = Literal["minmax", "moving_average", "histogram", "percentile", "entropy", "mse"]
Backend = Literal["fbgemm", "qnnpack", "onnx", "q31", "x86", "ort", "xnnpack"]  # x86: torch's x86 engine (FBGEMM or oneDNN per layer); ort: onnxruntime CPU; xnnpack: ExecuTorch's XNNPACK delegate
Mode = Literal["auto", "graph", "modules"]  # calibrate: torch.fx graph, module swap, or graph falling back

DTYPES: tuple[str, ...] = get_args(Dtype)
QSCHEMES: tuple[str, ...] = get_args(QScheme)
OBSERVERS: tuple[str, ...] = get_args(Observer)
BACKENDS: tuple[str, ...] = get_args(Backend)
MODES: tuple[str, ...] = get_args(Mode)
#: The integer range of each 8-bit dtype (``qcal.qparams.QRANGES``); reduce_range halves it.
DTYPE_RANGES: dict[str, tuple[int, int]] = {"quint8": (0, 255), "qint8": (-128, 127)}


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


def _whole(name: str, value: Any) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be a whole number or None, got {value!r}")
    return operator.index(value)


def code_range(dtype: str, reduce_range: bool = False, quant_min: int | None = None,
               quant_max: int | None = None) -> tuple[int, int]:
    """The (qmin, qmax) of the codes, as torch's observers compute it (``calculate_qmin_qmax``).

    None, None: the dtype's range, halved by ``reduce_range`` (quint8 0..127, qint8 -64..63).
    A given range must lie within the dtype's and include 0 (torch asserts it); reduce_range
    then halves it too, ``(quant_min // 2, quant_max // 2)``, exactly as torch does.

    Example:
        >>> code_range("qint8", quant_min=-127, quant_max=127)
        (-127, 127)

    Raises:
        ValueError: an unknown dtype, one bound without the other, or a range that is outside
            the dtype's, excludes 0, or is empty (also after reduce_range's halving).
        TypeError: a bound that is not a whole number.
    """
    check_choice("dtype", dtype, DTYPES)
    lo, hi = DTYPE_RANGES[dtype]
    if quant_min is None and quant_max is None:
        return (lo // 2, hi // 2) if reduce_range else (lo, hi)
    if quant_min is None or quant_max is None:
        raise ValueError(f"quant_min and quant_max go together (torch ignores one alone); got quant_min="
                         f"{quant_min!r}, quant_max={quant_max!r}: give both, or neither for {dtype}'s range")
    qmin, qmax = _whole("quant_min", quant_min), _whole("quant_max", quant_max)
    if not lo <= qmin < qmax <= hi:
        raise ValueError(f"quant_min..quant_max {qmin}..{qmax} must be a non-empty range within {dtype}'s "
                         f"{lo}..{hi} (quant_min < quant_max)")
    if not qmin <= 0 <= qmax:
        raise ValueError(f"quant_min..quant_max {qmin}..{qmax} must include 0 (torch's observers assert it: "
                         "0.0 must map to a code)")
    if reduce_range:
        if qmin // 2 >= qmax // 2:
            raise ValueError(f"reduce_range halves quant_min..quant_max {qmin}..{qmax} to {qmin // 2}..{qmax // 2}, "
                             "an empty range; give the range you want without reduce_range")
        return qmin // 2, qmax // 2
    return qmin, qmax


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
        quant_min, quant_max: the integer range of the codes (torch's observer arguments),
            e.g. -127, 127 for XNNPACK's symmetric int8 weights or -8, 7 for 4-bit weights
            stored in qint8: the scale spreads the range over it, weights' codes are clamped
            to it. Both or neither; within the dtype's range and including 0. None: the
            dtype's range. With reduce_range too, the given range is halved
            (``quant_min // 2, quant_max // 2``), as torch's observers do (``code_range``).

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
    quant_min: int | None = None
    quant_max: int | None = None

    def __post_init__(self) -> None:
        check_choice("dtype", self.dtype, DTYPES)
        check_choice("qscheme", self.qscheme, QSCHEMES)
        check_choice("observer", self.observer, OBSERVERS)
        object.__setattr__(self, "reduce_range", bool(self.reduce_range))
        code_range(self.dtype, self.reduce_range, self.quant_min, self.quant_max)
        if self.quant_min is not None:
            object.__setattr__(self, "quant_min", operator.index(self.quant_min))
            object.__setattr__(self, "quant_max", operator.index(self.quant_max))
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

    @property
    def custom_range(self) -> bool:
        """True when quant_min/quant_max are given (torch's ``has_customized_qrange``)."""
        return self.quant_min is not None

    def code_range(self) -> tuple[int, int]:
        """(qmin, qmax) of the codes: ``code_range(dtype, reduce_range, quant_min, quant_max)``."""
        return code_range(self.dtype, self.reduce_range, self.quant_min, self.quant_max)

    def option(self, name: str, default: Any = None) -> Any:
        """The value of observer option ``name``, or ``default``."""
        return dict(self.options).get(name, default)

    def label(self) -> str:
        """A short human-readable label, e.g. ``qint8 per_channel_symmetric minmax``."""
        extra = " reduce_range" if self.reduce_range else ""
        if self.custom_range:
            extra += f" quant_min={self.quant_min} quant_max={self.quant_max}"
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
_XNN_EPS = (("eps", 2.0**-12),)  # XNNPACKQuantizer's observers all take eps=2**-12 (torch's default: 1.2e-7)
_XNN_ACT = QSpec("qint8", "per_tensor_affine", "histogram", options=_XNN_EPS)
_XNN_RANGE_NOTE = (" Weights stop at -127 so that ARM kernels summing two int8 products in int16 "
                   "cannot overflow (2 * 128 * 127 fits, 2 * 128 * 128 does not).")


def _xnn_weight(qscheme: QScheme) -> QSpec:
    return QSpec("qint8", qscheme, "minmax", ch_axis=0, options=_XNN_EPS, quant_min=-127, quant_max=127)


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
        Scheme("xnnpack_default", _xnn_weight("per_channel_symmetric"), _XNN_ACT,
               "ExecuTorch's XNNPACKQuantizer, get_symmetric_quantization_config(is_per_channel=True): "
               "per-channel symmetric int8 weights in -127..127 (scale max|w_channel| / 127, zero point "
               "0) and int8 affine activations over -128..127 chosen by the histogram observer, every "
               "observer with eps 2**-12; the float bias is quantized by the delegate (int32 at scale "
               "sa * sw). Runs on backend 'xnnpack', the delegate's arithmetic." + _XNN_RANGE_NOTE),
        Scheme("xnnpack_per_tensor", _xnn_weight("per_tensor_symmetric"), _XNN_ACT,
               "XNNPACKQuantizer's get_symmetric_quantization_config(is_per_channel=False): one "
               "symmetric int8 scale per weight tensor, max|w| / 127 over -127..127, and the same "
               "int8 histogram activations (eps 2**-12). Runs on backend 'xnnpack'." + _XNN_RANGE_NOTE),
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
