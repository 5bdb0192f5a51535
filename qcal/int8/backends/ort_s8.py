"""What onnxruntime does to int8 (qint8) activations on x86: uint8 where it can, float elsewhere.

Read in microsoft/onnxruntime (``core/optimizer/graph_transformer_utils.cc``, Level 2, and
the files named below) and checked against onnxruntime 1.32 on an AMD EPYC (AVX-512-VNNI,
no AMX; tests/int8/test_int8_ort_s8.py):

* ``QDQIsInt8Allowed()`` (``selectors_actions/qdq_selector_action_transformer.h``) is a
  constexpr ``false`` on every non-ARM build, whatever the CPU (MLAS has no ConvSym int8-input
  kernels on x86: ``mlas/lib/platform.cpp`` sets ``ConvSymS8S8Dispatch`` only on ARM), so the
  graph below is the same on AVX2, AVX-512, AVX-512-VNNI and AMX. The CPU EP first runs
  ``QDQS8ToU8Transformer``
  (``qdq_transformer/qdq_s8_to_u8.cc``, ``QDQ_S8_to_U8``): a QuantizeLinear with int8 zero point
  ``z`` whose output has exactly **one** edge, to a DequantizeLinear with the same zero point,
  becomes a uint8 pair with zero point ``z + 128`` (the same float values, codes shifted by 128).
  ``to_onnx`` gives every consumer of a value its own DequantizeLinear (and onnxruntime's
  ``EnsureUniqueDQForNodeUnit`` would too), so a value read by two steps (a residual block's
  input, read by its first conv and by the Add) keeps its int8 pair.
* Then ``QDQSelectorActionTransformer(qdq_is_int8_allowed=false)``
  (``selectors_actions/qdq_selectors.cc``: ``ConvNodeGroupSelector``, ``GemmNodeGroupSelector``,
  ``BinaryNodeGroupSelector``) fuses ``DQ -> Conv/Gemm/Add -> Q`` only when the input(s) and
  the output have the same type and that type is not int8: a layer with an int8 input or an
  int8 output (either side of such a branch point) is left as DequantizeLinear -> **float**
  Conv / Gemm / Add -> QuantizeLinear. The fused ones run on uint8 codes as QLinearConv /
  QGemm / QLinearAdd (``qcal.int8.backends.ort``): their requantization with zero point
  ``zo + 128`` gives the int8 result shifted by 128. What depends on the CPU is the U8S8
  kernels' int16 pair saturation (``qcal.int8.cpu.mlas``): on a saturating dispatch (AVX2,
  AVX-512 without VNNI) the pairs are those of the uint8 codes, so a fused layer runs on them
  there (``_uint8_layer``; read in the source, checked on this CPU only by emulation: its
  VNNI kernels are exact, where the int8 kernel gives the same codes).

A float layer here: ``x = f32((q - z) * s)``; weights ``f32(w_q * sw_j)`` and bias
``f32(f32(b_q) * f32(sa * sw_j))`` (DequantizeLinear of the file's int32 bias); Relu in float;
QuantizeLinear (a division, ``ort_quantize``). A float Add is ``f32(x_a + x_b)``. The conv is
**not** the NCHWc one of a recipe's fp32 layer (``ort_fp32``): the NCHWc transformer takes
only an initializer weight (``nchwc_transformer.cc``, ``TransformConv``), and this one is a
DequantizeLinear's output, so ``Conv`` runs ``MlasConv``: a 1x1 unpadded conv is one SGEMM
per image (``mlas_conv_gemm_direct``: K slices of 128 = MLAS_SGEMM_STRIDEK, not the 256 of a
prepacked B; the FMA3 and AVX512F SGEMM kernels accumulate alike, ``ort_fp32``). Not
reproduced, so torch's conv or ``ort_float_gemm`` stands in and a near-tie may land one
code apart: other conv shapes (im2col), one output channel or one output pixel (MLAS's M1
kernels), and a float Gemm (its weight is not prepacked either; measured: neither blocking
of ``ort_float_gemm`` matches it). Average pools with an int8 side (read twice) are not
modelled either: qcal runs them as fused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qcal.int8.backends.ort import ort_dequantize, ort_dispatch, ort_quantize
from qcal.int8.backends.ort_fp32 import ort_float_gemm
from qcal.qparams import _fma_f32

__all__ = ["S8Plan", "mlas_conv_gemm_direct", "mlas_gemm_direct", "mlas_sgemm_stride_k", "ort_s8_float_add",
           "ort_s8_layers", "ort_s8_plan", "ort_s8_program"]

#: MLAS's SGEMM strides for an unpacked B (``mlas/lib/mlasi.h``: MLAS_SGEMM_STRIDEN,
#: MLAS_SGEMM_STRIDEK; a prepacked B, a Gemm's constant weight, uses MLAS_SGEMM_PACKED_STRIDEK = 256)
_STRIDE_N, _STRIDE_K = 128, 128

_FUSABLE = ("conv", "linear", "add")


@dataclasses.dataclass(frozen=True)
class S8Plan:
    """How onnxruntime runs a graph with int8 activations (see the module doc).

    Attributes:
        uint8: the quantized values whose Q/DQ pair onnxruntime turns into uint8.
        float_steps: the conv / linear / add steps it leaves in float (an int8 side).
    """

    uint8: frozenset[str]
    float_steps: frozenset[str]


def _is_alias(step: Any, graph: Any) -> bool:
    """A step ``to_onnx`` writes as its input itself (``identity``, an ``nn.Identity`` module)."""
    if step.kind == "identity":
        return True
    return step.kind == "shape" and step.op == "call_module" and \
        type(graph.module.get_submodule(step.target)) is nn.Identity


def ort_s8_plan(graph: Any) -> S8Plan:
    """Which int8 Q/DQ pairs ``QDQS8ToU8Transformer`` converts, and which layers stay float.

    A quantized value (the output of a quantize / conv / linear / add / pool / clamp step: one
    QuantizeLinear in the file) is converted when exactly one DequantizeLinear reads it: one
    reference by one later step (aliases, e.g. ``nn.Identity``, pass their readers on).
    """
    alias: dict[str, str] = {}
    quantized: set[str] = set()
    readers: dict[str, int] = {}
    for step in graph.steps:
        if _is_alias(step, graph) and step.refs:
            src = alias.get(step.refs[0], step.refs[0])
            if src in quantized:
                alias[step.name] = src
                continue
        for ref in step.refs:
            src = alias.get(ref, ref)
            if src in quantized:
                readers[src] = readers.get(src, 0) + 1
        if step.obs is not None and step.kind not in ("dequantize", "input", "output", "float"):
            quantized.add(step.name)
    uint8 = frozenset(v for v in quantized if readers.get(v, 0) == 1)
    float_steps = set()
    for step in graph.steps:
        if step.kind in _FUSABLE:
            sides = [alias.get(r, r) for r in step.refs] + [step.name]
            if not all(v in uint8 for v in sides):
                float_steps.add(step.name)
    return S8Plan(uint8, frozenset(float_steps))


def mlas_gemm_direct(conv: nn.Conv2d) -> bool:
    """Whether MLAS's ``MlasConv`` runs this conv as one SGEMM on the input itself
    (``mlas/lib/convolve.cpp``, ``MlasConvPrepare``: ``MlasConvAlgorithmGemmDirect`` for a 1x1
    kernel, stride 1, no padding; groups 1 here)."""
    return (conv.groups == 1 and tuple(conv.kernel_size) == (1, 1) and tuple(conv.stride) == (1, 1)
            and tuple(conv.padding) == (0, 0) and conv.padding_mode == "zeros")


def mlas_sgemm_stride_k(n: int, k: int) -> int:
    """The K slice of ``MlasSgemmOperation`` (``mlas/lib/sgemm.cpp``) for C = A (M x K) B (K x N),
    A not transposed: N >= K halves StrideK while half still covers K (one slice), a small N
    doubles it while StrideN > 16 and StrideN / 2 >= N.

    Example:
        >>> mlas_sgemm_stride_k(3136, 96), mlas_sgemm_stride_k(196, 576), mlas_sgemm_stride_k(49, 960)
        (128, 128, 256)
    """
    stride_n, stride_k = _STRIDE_N, _STRIDE_K
    if n >= k:
        while stride_k // 2 >= k:
            stride_k //= 2
    else:
        while stride_n > 16 and stride_n // 2 >= n:
            stride_k, stride_n = stride_k * 2, stride_n // 2
    return stride_k


@torch.no_grad()
def mlas_conv_gemm_direct(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """onnxruntime's float 1x1 Conv on x86 when the NCHWc transformer leaves it alone (its weight
    is a DequantizeLinear's output, not an initializer: ``nchwc_transformer.cc``,
    ``TransformConv``): per image one SGEMM ``W (O x C) . X (C x HW)``; each K slice of
    ``mlas_sgemm_stride_k(HW, C)`` is an ``fma`` chain from 0 in channel order, the slices are
    added to the output one by one, then ``MlasActivation`` adds the bias. Not modelled: one
    output channel or one output pixel, where ``MlasSgemmOperation`` calls its M1 kernels
    (``KernelM1Routine`` / ``KernelM1TransposeBRoutine``), which sum in another order (measured:
    most outputs differ in the last bit there); this chain stands in."""
    n, c, h, w = x.shape
    o = weight.shape[0]
    cols64 = x.float().reshape(n, c, h * w).double()
    wk64 = weight.detach().float().reshape(o, c).double()
    step = mlas_sgemm_stride_k(h * w, c)
    out = None
    for k0 in range(0, c, step):
        acc = torch.zeros(n, o, h * w)
        for k in range(k0, min(c, k0 + step)):
            acc = _fma_step(cols64[:, k:k + 1, :], wk64[:, k].view(1, o, 1), acc)
        out = acc if out is None else out + acc
    if bias is not None:
        out = out + bias.detach().float().view(1, o, 1)
    return out.reshape(n, o, h, w)


def _fma_step(x64: torch.Tensor, w64: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    """float32 ``fma(x, w, acc)`` (x, w float32 values held in float64): the float64 product is
    exact and the float64 sum rounds to the fma's float32 except where it lands exactly on a
    float32 midpoint (low 29 mantissa bits ``1 << 28``); there ``qcal.qparams._fma_f32`` decides."""
    s = x64 * w64 + acc
    r = s.float()
    tie = (s.view(torch.int64) & 0x1FFFFFFF) == 0x10000000
    if bool(tie.any()):
        at = tie.nonzero(as_tuple=True)
        r[at] = _fma_f32(x64.expand_as(s)[at].float(), w64.expand_as(s)[at].float(), acc.expand_as(s)[at])
    return r


def _float_module(layer: Any) -> tuple[nn.Module, bool]:
    """The layer's DequantizeLinear'd weights and bias as a float module (as in the file), and
    whether MLAS's float kernels for it are modelled."""
    from qcal.int8 import requant_multipliers

    per_channel = layer.weight_scale.numel() > 1
    sw = layer.weight_scale.float().reshape(-1) if per_channel else layer.weight_scale.float().reshape(1)
    shape = (-1,) + (1,) * (layer.weight_q.dim() - 1)
    weight = (layer.weight_q.to(torch.int32) - layer.weight_zero_point.reshape(shape).to(torch.int32)).float() \
        * sw.reshape(shape)
    bias = None
    if layer.bias is not None:
        w_scale = layer.weight_scale if per_channel else float(layer.weight_scale)
        rq = requant_multipliers(layer.input_scale, w_scale, layer.output_scale, layer.bias, backend="ort")
        bias = rq.bias_int32.float() * rq.act_times_w_scale  # DequantizeLinear of the int32 bias
    if layer.kind == "conv":
        o, c, kh, kw = layer.weight_q.shape
        mod = nn.Conv2d(c * layer.groups, o, (kh, kw), layer.stride, layer.padding, layer.dilation, layer.groups,
                        bias=bias is not None)
        modelled = mlas_gemm_direct(mod)
    else:
        mod = nn.Linear(layer.weight_q.shape[1], layer.weight_q.shape[0], bias=bias is not None)
        modelled = True
    with torch.no_grad():
        mod.weight.copy_(weight)
        if bias is not None:
            mod.bias.copy_(bias)
    return mod.eval(), modelled


def _float_layer(layer: Any, detailed_kernel: Callable[[torch.Tensor], Any]) -> Callable[..., Any]:
    """``kernel(x_q, detailed)`` as onnxruntime runs the layer in float: DQ -> Conv/Gemm ->
    [Relu] -> Q, int8 codes in and out (``detailed``: the integer kernel's result with these codes)."""
    mod, modelled = _float_module(layer)
    sx, zx, so, zo = layer.input_scale, layer.input_zero_point, layer.output_scale, layer.output_zero_point

    def run(x_q: torch.Tensor, detailed: bool) -> Any:
        x = ort_dequantize(x_q, sx, zx)
        if isinstance(mod, nn.Linear):
            y = ort_float_gemm(x, mod.weight, mod.bias)  # stands in: not reproduced (see the module doc)
        elif modelled:
            y = mlas_conv_gemm_direct(x, mod.weight, mod.bias)
        else:  # not modelled: torch's float conv stands in (see the module doc)
            y = F.conv2d(x, mod.weight, mod.bias, mod.stride, mod.padding, mod.dilation, mod.groups)
        if layer.relu:
            y = torch.relu(y)
        out = ort_quantize(y, so, zo, torch.int8)
        if out.dim() == 4:
            out = out.contiguous(memory_format=torch.channels_last)
        if not detailed:
            return out
        return dataclasses.replace(detailed_kernel(x_q), out=out)

    return run


def _pack(layer: Any) -> Any:
    """The layer's prepacked int8 kernel on the ort flavour (as ``make_kernel`` packs it)."""
    from qcal.int8.packed import pack_conv2d, pack_linear

    scale, zp = layer.weight_scale, layer.weight_zero_point
    if scale.numel() == 1:
        scale, zp = float(scale), int(zp)
    weights = (layer.weight_q, scale, zp, layer.bias)
    if layer.kind == "conv":
        return pack_conv2d(*weights, stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                           groups=layer.groups, backend="ort")
    return pack_linear(*weights, backend="ort")


def _flip(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """q + 128 (int8 -> uint8) or q - 128 (uint8 -> int8): the top bit."""
    return t.view(torch.uint8).bitwise_xor(0x80).view(dtype)


def _uint8_layer(layer: Any, kernel: Callable[..., Any]) -> Callable[..., Any]:
    """A fused layer as onnxruntime runs it after ``QDQS8ToU8Transformer``: QLinearConv / QGemm on
    uint8 codes ``q + 128`` with zero points ``z + 128``. Where the assumed MLAS dispatch's U8S8
    kernels saturate int16 pairs (``vpmaddubsw``: AVX2, AVX-512 without VNNI; ``qcal.int8.cpu.mlas``)
    the pairs are those of the uint8 codes, so the layer runs on them; elsewhere the sums are
    exact and the int8 kernel gives the same codes (shifted by 128), so it runs as it is."""
    packed = None
    sx, zx, so, zo = layer.input_scale, layer.input_zero_point, layer.output_scale, layer.output_zero_point

    def run(x_q: torch.Tensor, detailed: bool) -> Any:
        nonlocal packed
        if x_q.dtype != torch.int8 or not ort_dispatch().saturates:
            return kernel(x_q, detailed)
        packed = _pack(layer) if packed is None else packed
        res = packed(_flip(x_q, torch.uint8), sx, zx + 128, so, zo + 128, relu=layer.relu, detailed=detailed)
        if detailed:
            return dataclasses.replace(res, out=_flip(res.out, torch.int8))
        return _flip(res, torch.int8)

    def capture(x_q: torch.Tensor) -> Any:  # a captured program records the int8 kernel where it is the same
        own = getattr(kernel, "capture", None)
        return None if own is None or ort_dispatch().saturates else own(x_q)

    run.capture = capture  # type: ignore[attr-defined]
    return run


def ort_s8_layers(graph: Any, plan: S8Plan, kernels: Any, quant_layers: dict[str, Any]) -> dict[str, Any]:
    """{layer: kernel} for the program: the float layers of ``plan`` in their float form, the
    fused ones on uint8 codes where that changes their sums (``_uint8_layer``)."""
    targets = {s.target: s.name in plan.float_steps for s in graph.steps if s.kind in ("conv", "linear")}

    def detailed(t: str) -> Callable[[torch.Tensor], Any]:
        return lambda x_q: kernels[t](x_q, True)  # packed on first use, as the program's own

    def lazy(t: str) -> Callable[..., Any]:
        def call(x_q: torch.Tensor, d: bool) -> Any:
            return kernels[t](x_q, d)

        call.capture = lambda x_q: getattr(kernels[t], "capture", lambda _: None)(x_q)  # type: ignore[attr-defined]
        return call

    return _Overlay(kernels, {t: _float_layer(quant_layers[t], detailed(t)) if in_float else
                              _uint8_layer(quant_layers[t], lazy(t))
                              for t, in_float in targets.items() if t in quant_layers})


class _Overlay(dict):
    """The program's kernels with some replaced; the others looked up in the original."""

    def __init__(self, base: Any, replaced: dict[str, Any]) -> None:
        super().__init__(replaced)
        self._base = base

    def __missing__(self, name: str) -> Any:
        return self._base[name]


def ort_s8_program(graph: Any, kernels: Any, backend: str, act_dtype: str) -> tuple[Any, frozenset[str]]:
    """(kernels, float adds) for an ``IntegerProgram``: on the ort flavour with qint8
    activations ``ort_s8_layers`` and the add steps onnxruntime runs in float; else as given.
    ``kernels`` is the program's ``{layer: kernel}`` (a ``_LazyKernels``, whose QuantLayers
    give the float layers their numbers)."""
    if backend != "ort" or act_dtype != "qint8":
        return kernels, frozenset()
    plan = ort_s8_plan(graph)
    layers = ort_s8_layers(graph, plan, kernels, getattr(kernels, "_layers", {}))
    return layers, frozenset(s.name for s in graph.steps if s.kind == "add" and s.name in plan.float_steps)


def ort_s8_float_add(a_q: torch.Tensor, a_qparams: tuple[float, int], b_q: torch.Tensor,
                     b_qparams: tuple[float, int], out_qparams: tuple[float, int], relu: bool) -> torch.Tensor:
    """DequantizeLinear x2 -> float Add -> [Relu] -> QuantizeLinear, int8 codes in and out."""
    y = ort_dequantize(a_q, *a_qparams) + ort_dequantize(b_q, *b_qparams)
    if relu:
        y = torch.relu(y)
    out = ort_quantize(y, *out_qparams, torch.int8)
    nhwc = a_q.dim() == 4 and not a_q.is_contiguous() and a_q.is_contiguous(memory_format=torch.channels_last)
    return out.contiguous(memory_format=torch.channels_last) if nhwc else out
