"""Which backend runs which scheme: the refusals (with their reasons) and each preset's engine.

``check_runnable(scheme, backend)`` refuses before any calibration what a backend cannot run
(qint8 activations on torch's engines; uint8 activations, a narrowed activation range, uint8
or affine weights on ExecuTorch's XNNPACK delegate), so a built scheme fails with the reason
instead of a dtype error deep inside a kernel. ``PRESET_ENGINES`` names the engine each
``*_default`` (and XNNPACK) preset is made for; ``preset_backends`` and ``presets_for`` say
where "every preset" runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from qcal.schemes import BACKENDS, SCHEMES, QSpec, Scheme, check_backend

__all__ = ["PRESET_ENGINES", "check_runnable", "preset_backends", "presets_for", "unrunnable"]

_TORCH_ENGINES = tuple(b for b in BACKENDS if b in ("fbgemm", "qnnpack", "x86"))
# (backend, role, dtype) -> why the backend cannot run it. Checked before any calibration, so
# a built scheme fails with the reason instead of a dtype error deep inside a kernel.
_UNRUNNABLE: dict[tuple[str, str, str], str] = {
    **{(b, "activation", "qint8"): f"{b}'s kernels take quint8 activations only (torch's "
       f"quantized::conv2d/linear refuse qint8 inputs under the {b} engine)" for b in _TORCH_ENGINES},
    **{(b, "activation", "qint8"): "qcal's whole-model pipeline runs qint8 activations for the ort and "
       "xnnpack flavours only (not checked against the onnx reference ops or gemmlowp's q31)" for b in ("onnx", "q31")},
    **{(b, "weight", "quint8"): f"{b}'s kernels take qint8 weights only (torch packs weights "
       f"as qint8 for the {b} engine)" for b in _TORCH_ENGINES},
}


# What ExecuTorch's XNNPACK delegate cannot run, read from executorch/backends/xnnpack
# (operators/node_visitor.py, quant_params.py): (role, setting, test, reason, fix).
_XNNPACK_REFUSED: tuple[tuple[str, Callable[[QSpec], str], Callable[[QSpec], bool], str, str], ...] = (
    ("activation", lambda s: "quint8", lambda s: s.dtype == "quint8",
     "the delegate serializes every static quantized activation as signed int8 (xnn_datatype_qint8), so "
     "uint8 codes would be read as int8", "use qint8 activations (xnnpack_default's)"),
    ("activation", lambda s: "reduce_range" if s.reduce_range else f"quant_min..quant_max {s.quant_min}..{s.quant_max}",
     lambda s: s.dtype == "qint8" and s.code_range() != (-128, 127),
     "XNNPACK's qs8 tensors carry a scale and a zero point, no code range: its outputs span -128..127 "
     "(XNNPACK accumulates in int32, there are no int16 pair sums to protect)", "use the full -128..127"),
    ("weight", lambda s: "quint8", lambda s: s.dtype == "quint8",
     "the delegate's convolution and fully-connected take int8 weights (qint8 / qcint8)", "use qint8 weights"),
    ("weight", lambda s: s.qscheme, lambda s: not s.symmetric,
     "XNNPACK's qs8/qc8w kernels have no weight zero point (per channel the delegate keeps scales only)",
     "use a symmetric qscheme (zero point 0)"),
)
#: The engine a preset is made for: compare and calibrate_many run it there unless told otherwise.
PRESET_ENGINES: dict[str, str] = {"fbgemm_default": "fbgemm", "qnnpack_default": "qnnpack",
                                  "xnnpack_default": "xnnpack", "xnnpack_per_tensor": "xnnpack"}


def unrunnable(scheme: Scheme, backend: str) -> str | None:
    """Why ``backend`` cannot run ``scheme`` (the message ``check_runnable`` raises), or None."""
    check_backend(backend)
    for role, spec in (("weight", scheme.weight), ("activation", scheme.activation)):
        reason = _UNRUNNABLE.get((backend, role, spec.dtype))
        if reason:
            return (f"scheme {scheme.name!r} cannot run on {backend}: {spec.dtype} {role}s: {reason}; use "
                    f"{'quint8' if spec.dtype == 'qint8' else 'qint8'} {role}s"
                    f"{' or the onnx backend' if role == 'weight' else ''}"
                    + (f" (preset {scheme.name} runs on backend {PRESET_ENGINES[scheme.name]!r})"
                       if scheme.name in PRESET_ENGINES and SCHEMES.get(scheme.name) == scheme else ""))
    if backend != "xnnpack":
        return None
    for role, setting, refused, reason, fix in _XNNPACK_REFUSED:
        spec = scheme.weight if role == "weight" else scheme.activation
        if refused(spec):
            return f"scheme {scheme.name!r} cannot run on xnnpack: {setting(spec)} {role}s: {reason}; {fix}"
    return None


def check_runnable(scheme: Scheme, backend: str) -> None:
    """Refuse a (scheme, backend) pair the backend cannot run, saying why.

    Raises:
        ValueError: e.g. qint8 activations on fbgemm, or uint8 activations, reduce_range,
            affine weights on xnnpack, naming the scheme, the setting and the reason.
    """
    reason = unrunnable(scheme, backend)
    if reason:
        raise ValueError(reason)


def preset_backends(scheme: Any, backends: Iterable[str] | None) -> list[str]:
    """The backends to build ``scheme`` on: None gives a preset's own engine (``PRESET_ENGINES``),
    anything else "fbgemm". Given backends, a preset keeps those it can run on, and runs on its
    own engine when it can run on none (xnnpack_default among fbgemm and qnnpack); any other
    scheme keeps them all (``check_runnable`` then refuses what cannot run)."""
    name = getattr(scheme, "name", None)
    preset = isinstance(scheme, Scheme) and SCHEMES.get(name) == scheme
    if backends is None:
        return [PRESET_ENGINES.get(name, "fbgemm") if preset else "fbgemm"]
    backends = list(backends)
    if not preset:
        return backends
    runnable = [b for b in backends if unrunnable(scheme, b) is None]
    return runnable or ([PRESET_ENGINES[name]] if name in PRESET_ENGINES else backends)


def presets_for(backend: str) -> list[str]:
    """The preset names ``backend`` can run ("every preset" for a search on one backend)."""
    return [name for name, s in SCHEMES.items() if unrunnable(s, backend) is None]
