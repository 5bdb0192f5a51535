"""The integer ops a whole-model program needs, bound to qcal's engine (``qcal.int8``).

Conv/linear layers are prepacked once per ``QuantizedModel`` (``make_kernel``); the other
ops take codes and qparams. Clamps (ReLU6, Hardtanh) are done here (they only compare
codes); pools and the quantized add come from the engine, which reproduces each torch
engine's rounding (which also depends on the input's memory format, as torch's kernels do).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from qcal.int8 import native, ops, qadd
from qcal.int8.backends.ort import ort_quantize
from qcal.int8.packed import pack_conv2d, pack_linear
from qcal.qparams import _UNFUSED, INT_DTYPES, QRANGES, quantize

__all__ = ["adaptive_avg_pool2d", "add", "avg_pool2d", "clamp_codes", "make_kernel", "max_pool2d", "quantize_codes",
           "quantize_value"]


def quantize_codes(x: torch.Tensor, scale: Any, zero_point: Any, dtype: str = "quint8",
                   axis: int | None = None, backend: str = "fbgemm") -> torch.Tensor:
    """``qcal.qparams.quantize`` (torch-exact, or ONNX QuantizeLinear for backend "onnx";
    per tensor or per channel along ``axis``); backend "ort": onnxruntime's QuantizeLinear."""
    if backend == "ort" and axis is None:
        return ort_quantize(x, float(scale), int(zero_point), INT_DTYPES[dtype])
    # per tensor, torch's fused rule (every backend quantize does not run unfused): one native pass
    if axis is None and backend not in _UNFUSED and isinstance(x, torch.Tensor) and x.numel() >= 4096:
        out = native.quantize(x, float(scale), int(zero_point), INT_DTYPES[dtype])  # the same codes
        if out is not None:
            return out
    return quantize(x, scale, zero_point, dtype, axis=axis, backend=backend)


def quantize_value(value: float, scale: float, zero_point: int, dtype: torch.dtype = torch.uint8) -> int:
    """One float as torch's ``quantize_val`` (FBGEMM, non-legacy) codes it:
    ``clamp(zp + rint(f32(v * f32(1/scale))), qmin, qmax)``: the zero point after rounding.

    Example: 6.0 at scale 0.05, zero point 10 -> 10 + rint(120.0) = 130.
    """
    return _quantize_value(float(value), float(scale), int(zero_point), dtype)


@functools.lru_cache(maxsize=4096)
def _quantize_value(value: float, scale: float, zero_point: int, dtype: torch.dtype) -> int:
    # cached: the clamp bounds of every ReLU6 are coded again on each call otherwise
    inv = torch.tensor(1.0, dtype=torch.float32) / torch.tensor(scale, dtype=torch.float32)
    t = torch.tensor(value, dtype=torch.float32) * inv
    qmin, qmax = QRANGES["quint8" if dtype == torch.uint8 else "qint8"]
    return int(min(max(zero_point + int(torch.round(t)), qmin), qmax))


def clamp_codes(q: torch.Tensor, scale: float, zero_point: int, lo: float, hi: float) -> torch.Tensor:
    """Quantized hardtanh / ReLU6 / clamp: the bounds coded with the tensor's own qparams."""
    return q.clamp(quantize_value(lo, scale, zero_point, q.dtype), quantize_value(hi, scale, zero_point, q.dtype))


def max_pool2d(q: torch.Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0,
               dilation: Any = 1, ceil_mode: bool = False, *, backend: str = "fbgemm") -> torch.Tensor:
    """torch's quantized max_pool2d: the window maximum of the codes (the same on every engine)."""
    return ops.max_pool2d(q, kernel_size, stride, padding, dilation, ceil_mode)


def avg_pool2d(q: torch.Tensor, scale: float, zero_point: int, kernel_size: Any, stride: Any = None,
               padding: Any = 0, ceil_mode: bool = False, count_include_pad: bool = True,
               divisor_override: int | None = None, *, backend: str = "fbgemm") -> torch.Tensor:
    """torch's quantized avg_pool2d for ``backend`` (input and output share qparams), by the engine."""
    return ops.avg_pool2d(q, scale, zero_point, kernel_size, stride, padding, ceil_mode,
                                    count_include_pad, divisor_override, backend=backend)


def adaptive_avg_pool2d(q: torch.Tensor, scale: float, zero_point: int, output_size: Any, *,
                        backend: str = "fbgemm") -> torch.Tensor:
    """torch's quantized adaptive_avg_pool2d for ``backend`` (shared qparams), by the engine."""
    return ops.adaptive_avg_pool2d(q, scale, zero_point, output_size, backend=backend)


def add(a: torch.Tensor, a_scale: float, a_zero_point: int, b: torch.Tensor, b_scale: float,
        b_zero_point: int, out_scale: float, out_zero_point: int, *, relu: bool = False,
        backend: str = "fbgemm") -> torch.Tensor:
    """torch's quantized add (add_relu with ``relu``) for ``backend``, by the engine."""
    return qadd.add(a, a_scale, a_zero_point, b, b_scale, b_zero_point, out_scale, out_zero_point,
                    relu=relu, backend=backend)


def make_kernel(layer: Any, backend: str) -> Callable[[torch.Tensor, bool], Any]:
    """A prepacked conv/linear for ``layer`` (a ``qcal.calibration.model.QuantLayer``) on ``backend``.

    Returns ``kernel(x_q, detailed)``: the output codes, or with ``detailed`` the engine's
    KernelResult (out, acc, saturated_pairs, requant); ``kernel.capture(x_q)``: the layer's
    ``capture`` (``qcal.int8.native.route``) for inputs like ``x_q``.
    """
    scale, zp = layer.weight_scale, layer.weight_zero_point
    if scale.numel() == 1:  # per tensor: the engine takes plain numbers
        scale, zp = float(scale), int(zp)
    weights = (layer.weight_q, scale, zp, layer.bias)
    if layer.kind == "conv":
        packed = pack_conv2d(*weights, stride=layer.stride, padding=layer.padding,
                                    dilation=layer.dilation, groups=layer.groups, backend=backend)
    else:
        packed = pack_linear(*weights, backend=backend)
    qparams = (layer.input_scale, layer.input_zero_point, layer.output_scale, layer.output_zero_point)
    # int8 codes in, int8 codes out (qint8 activations: an int8 zero point picks the output dtype)
    signed = (*qparams[:3], torch.tensor(layer.output_zero_point, dtype=torch.int8)) \
        if -128 <= layer.output_zero_point <= 127 else qparams
    relu = layer.relu

    def kernel(x_q: torch.Tensor, detailed: bool) -> Any:
        return packed(x_q, *(signed if x_q.dtype == torch.int8 else qparams), relu=relu, detailed=detailed)

    # a captured program's form of the same call (``qcal.graph.capture``), for uint8 codes
    kernel.capture = lambda x_q: packed.capture(x_q, *qparams, relu=relu)  # type: ignore[attr-defined]
    return kernel
