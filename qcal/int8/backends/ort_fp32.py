"""What onnxruntime does to a recipe's fp32 layers: it quantizes the ones between a DQ and a Q.

A recipe that keeps a conv/linear in fp32 is exported as ``DQ -> Conv/Gemm (float weights)
-> [Relu] -> Q`` (``qcal.export.onnx``). Under the default session options onnxruntime's
(1.32, the pinned version; saved runs record the version the prediction assumed)
``WeightBiasQuantization`` transformer (``core/optimizer/qdq_transformer/
weight_bias_quantization.cc``) rewrites every Conv/Gemm whose input comes from a per-tensor
DequantizeLinear and whose output reaches a QuantizeLinear without branching (a Relu or Clip
may sit between) and whose weight is a float initializer: it adds ``Q -> DQ`` to the weight
and an int32 bias, and the QDQ fusions then run the layer as QLinearConv / QGemm. The fp32
layer runs in int8 in onnxruntime.

The weight's qparams are ``GetQuantizationParameter<int8_t>`` (``core/util/qmath.h``),
asymmetric per tensor despite the transformer's comment: ``lo = min(min w, 0)``,
``hi = max(max w, 0)``, ``s = f32(f32(hi - lo) / 255)`` (1 when ``hi == lo``),
``z = rint(clamp(f32(-128 - f32(lo / s)), -128, 127))``; weights are then quantized by
QuantizeLinear (a division) and the bias by ``rint(f32(b / f32(sx * s)))`` (Mul, Div,
Round, Cast), which is qcal's ``ort`` bias rule. A layer whose input is the model input (no
DQ) or whose output is the model output (no Q) stays float and runs in MLAS's float kernels,
which depend on the MLAS dispatch (``qcal.int8.cpu.mlas``: ``QCAL_ORT_CPU``, else the CPU):

* ``ort_float_gemm``: MLAS's packed SGEMM; the FMA3 and the AVX512F kernels accumulate alike
  (one ``fma`` chain per K block of ``SGEMM_STRIDE_K``): checked on hardware with both (an
  AMD EPYC, AVX2; an Intel Xeon, AVX-512 + AMX).
* ``ort_float_conv``: MLAS's NCHWc conv (``mlas/lib/snchwc.cpp``; kernels
  ``x86_64/SconvKernelFma3.S`` / ``SconvKernelAvx512F.S`` from the same macros,
  ``SconvKernelCommon.h``) in channel blocks of ``MlasNchwcGetBlockSize()``: 8 with FMA3
  (**checked on hardware**, AMD EPYC), 16 with AVX-512F (the same ``vfmadd231ps`` chain over
  (kh, kw, channel in block), ``vaddps`` onto the output, then the bias; **checked on
  hardware**, an Intel Xeon whose dispatch is AMX: the AVX512F float kernels of every AVX-512F
  dispatch, 0 differing values on random shapes, tests/int8/test_int8_ort_fp32.py).
  ``ort_float_conv_reproduced`` claims bit-exactness where the model covers the shape; elsewhere
  (groups, channel counts outside the blocks) a float Conv is named "not reproduced"
  (``export --verify`` then attributes differences to it) and torch's conv stands in: their
  accumulation orders differ, so a requantization on a near-tie can land one code apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from qcal.int8.backends.ort import ort_dequantize, ort_dispatch, ort_quantize
from qcal.int8.cpu.mlas import MlasDispatch
from qcal.int8.packed import pack_conv2d, pack_linear
from qcal.qparams import _fma_f32

__all__ = ["NCHWC_BLOCK", "POINTWISE_CHANNELS", "SGEMM_STRIDE_K", "ort_float_conv", "ort_float_conv_modelled",
           "ort_float_conv_reproduced", "ort_float_gemm", "ort_float_layer", "ort_fp32_kernel", "ort_fp32_kernels",
           "ort_fp32_layers", "ort_fp32_notes", "ort_quantized_fp32_layers", "ort_weight_qparams"]

#: MLAS's SGEMM splits K into blocks of this many (``mlas/lib/sgemm.cpp``, MLAS_SGEMM_STRIDEK)
SGEMM_STRIDE_K = 256
#: MLAS's NCHWc channel block on AVX2 (``MlasNchwcGetBlockSize``; ``MlasDispatch.nchwc_block``:
#: 16 with AVX-512F)
NCHWC_BLOCK = 8
#: input channels one call of MLAS's NCHWc pointwise (1x1, unpadded) kernel sums (measured; in
#: snchwc.cpp ``MaximumInputChannelBatch = 128`` channels, whatever the block)
POINTWISE_CHANNELS = 128


def ort_weight_qparams(w: torch.Tensor) -> tuple[float, int]:
    """onnxruntime's int8 (scale, zero point) for a float weight (see the module doc).

    Example: weights in [-0.5, 1.5] -> scale f32(2 / 255), zero point rint(-128 + 63.75) = -64.
    """
    f = torch.float32
    lo = torch.clamp_max(w.detach().to(f).min(), 0.0)
    hi = torch.clamp_min(w.detach().to(f).max(), 0.0)
    if bool(hi == lo):  # all-zero weights: scale 1, zero point qmin - 0 / 1
        return 1.0, -128
    scale = (hi - lo) / torch.tensor(255.0, dtype=f)
    zp = torch.tensor(-128.0, dtype=f) - lo / scale
    return float(scale), int(torch.round(zp.clamp(-128.0, 127.0)))


def _is_layer(step: Any, graph: Any) -> bool:
    return (step.kind == "float" and step.op == "call_module"
            and type(graph.module.get_submodule(step.target)) in (nn.Conv2d, nn.Linear))


def ort_quantized_fp32_layers(graph: Any) -> dict[str, tuple[int, int]]:
    """The recipe's fp32 layers onnxruntime quantizes: {step name: (input obs, output obs)}.

    A layer qualifies when the program feeds it a dequantize step and its value has one
    consumer, a quantize step (its fused ReLU is the Relu node the transformer allows).
    """
    steps = {s.name: s for s in graph.steps}
    consumers: dict[str, list[Any]] = {}
    for s in graph.steps:
        for name in s.refs:
            consumers.setdefault(name, []).append(s)
    out: dict[str, tuple[int, int]] = {}
    for step in graph.steps:
        if not _is_layer(step, graph) or len(step.refs) != 1:
            continue
        src, users = steps[step.refs[0]], consumers.get(step.name, [])
        if src.kind == "dequantize" and len(users) == 1 and users[0].kind == "quantize":
            out[step.name] = (src.obs, users[0].obs)
    return out


def ort_fp32_layers(graph: Any) -> dict[str, str]:
    """How onnxruntime runs each fp32 layer of a recipe: {layer: "int8" (quantized by
    WeightBiasQuantization, reproduced), "float Gemm" (MLAS SGEMM, reproduced), "float Conv"
    (MLAS's NCHWc kernels, reproduced on the assumed dispatch: ``ort_float_conv_reproduced``)
    or "float Conv (not reproduced)" (shapes outside the model)}."""
    quantized = ort_quantized_fp32_layers(graph)
    out = {}
    for step in graph.steps:
        if _is_layer(step, graph):
            conv = isinstance(graph.module.get_submodule(step.target), nn.Conv2d)
            mod = graph.module.get_submodule(step.target)
            exact = not conv or ort_float_conv_reproduced(mod)
            kind = "int8" if step.name in quantized else ("float Conv" if conv else "float Gemm")
            out[step.target] = kind if kind == "int8" or exact else f"{kind} (not reproduced)"
    return out


def ort_fp32_notes(graph: Any) -> list[str]:
    """Plain-language notes on what onnxruntime does to a recipe's fp32 layers (empty if none)."""
    kinds = ort_fp32_layers(graph)
    by = {k: [n for n, v in kinds.items() if v == k]
          for k in ("int8", "float Gemm", "float Conv", "float Conv (not reproduced)")}
    out = []
    if by["int8"]:
        out.append(f"onnxruntime quantizes the fp32 layers {', '.join(by['int8'])} itself (WeightBiasQuantization: "
                   "int8 weights per tensor, asymmetric), because each sits between a DequantizeLinear and a "
                   "QuantizeLinear; the ort flavour reproduces it")
    if by["float Gemm"]:
        out.append(f"{', '.join(by['float Gemm'])} run as float Gemm in onnxruntime (MLAS SGEMM, reproduced)")
    if by["float Conv"]:
        out.append(f"{', '.join(by['float Conv'])} run as float Conv in onnxruntime (MLAS NCHWc kernels, reproduced)")
    if by["float Conv (not reproduced)"]:
        d = ort_dispatch()
        out.append(f"{', '.join(by['float Conv (not reproduced)'])} run as float Conv in onnxruntime with a kernel the "
                   f"ort flavour does not reproduce bit for bit (MLAS dispatch {d.name}: {d.float_kernels} kernels, "
                   f"blocks of {d.nchwc_block}; this shape is outside the NCHWc model): expect a few differing "
                   f"values after them")
    return out


def ort_fp32_kernel(module: nn.Module, x_qparams: tuple[float, int], y_qparams: tuple[float, int],
                    relu: bool, dtype: torch.dtype = torch.uint8) -> Callable[[torch.Tensor], torch.Tensor]:
    """The layer as onnxruntime runs it after quantizing it: float input (a DequantizeLinear's
    output, requantized exactly) -> QLinearConv / QGemm codes -> their dequantized floats
    (which the following QuantizeLinear turns back into the same codes)."""
    w = module.weight.detach().float()
    ws, wz = ort_weight_qparams(w)
    w_q = ort_quantize(w, ws, wz, torch.int8)
    bias = None if module.bias is None else module.bias.detach().float()
    if isinstance(module, nn.Conv2d):
        packed = pack_conv2d(w_q, ws, wz, bias, stride=module.stride, padding=module.padding,
                             dilation=module.dilation, groups=module.groups, backend="ort")
    else:
        packed = pack_linear(w_q, ws, wz, bias, backend="ort")
    (xs, xz), (ys, yz) = x_qparams, y_qparams

    def run(x: torch.Tensor) -> torch.Tensor:
        y_q = packed(ort_quantize(x, xs, xz, dtype), xs, xz, ys, yz, relu=relu)
        return ort_dequantize(y_q, ys, yz)

    return run


@torch.no_grad()
def ort_float_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """onnxruntime's float ``Gemm(x, weight, bias, transB=1)`` on x86 with FMA (MLAS packed SGEMM).

    Each K block of ``SGEMM_STRIDE_K`` accumulates ``fma(x_k, w_k, acc)`` from 0 in k order;
    the blocks are then added to C one by one, C starting at the broadcast bias (Gemm copies
    it into the output first) or at the first block. Checked against onnxruntime on random
    shapes (tests/int8/test_int8_ort_fp32.py) with the FMA3 kernel (AMD EPYC) and the AVX512F
    one (Intel Xeon): every MLAS dispatch qcal knows; torch's ``linear`` sums in another order
    and differs in the last bit on most outputs.
    """
    if x.dim() != 2:
        raise ValueError(f"Gemm takes a 2-D input (batch, features), got shape {tuple(x.shape)}")
    x, w = x.float(), weight.detach().float()
    m, k = x.shape
    c = None if bias is None else bias.detach().float().expand(m, w.shape[0])
    for k0 in range(0, k, SGEMM_STRIDE_K):
        acc = torch.zeros(m, w.shape[0])
        for i in range(k0, min(k, k0 + SGEMM_STRIDE_K)):
            acc = _fma_f32(x[:, i:i + 1], w[:, i].unsqueeze(0), acc)
        c = acc if c is None else c + acc
    return c


def _dispatch(dispatch: MlasDispatch | str | None) -> MlasDispatch:
    return dispatch if isinstance(dispatch, MlasDispatch) else ort_dispatch(dispatch)


def ort_float_conv_modelled(conv: nn.Conv2d, dispatch: MlasDispatch | str | None = None) -> bool:
    """Whether ``ort_float_conv`` models onnxruntime's float Conv of this layer on ``dispatch``
    (None: ``ort_dispatch()``): NCHWc kernels (groups 1, output channels a multiple of the
    dispatch's block) on an input with fewer channels than a block (the NCHW-input kernel) or
    a multiple of it (NCHWc input)."""
    block, c, o = _dispatch(dispatch).nchwc_block, conv.in_channels, conv.out_channels
    return (conv.groups == 1 and o % block == 0 and (c < block or c % block == 0)
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str))


def ort_float_conv_reproduced(conv: nn.Conv2d, dispatch: MlasDispatch | str | None = None) -> bool:
    """Whether ``ort_float_conv`` reproduces this float Conv bit for bit, checked on hardware:
    modelled (``ort_float_conv_modelled``) on a dispatch whose NCHWc model was checked on a
    real CPU (``MlasDispatch.float_conv_checked``: the FMA3 kernels, block 8, on an AMD EPYC;
    the AVX512F kernels, block 16, on an Intel Xeon).

    Example:
        >>> conv = nn.Conv2d(16, 16, 3)
        >>> ort_float_conv_reproduced(conv, "avx2"), ort_float_conv_reproduced(nn.Conv2d(8, 8, 3, groups=8), "avx2")
        (True, False)
    """
    d = _dispatch(dispatch)
    return d.float_conv_checked and ort_float_conv_modelled(conv, d)


@torch.no_grad()
def ort_float_conv(x: torch.Tensor, conv: nn.Conv2d, dispatch: MlasDispatch | str | None = None) -> torch.Tensor:
    """onnxruntime's float Conv on x86 (MLAS NCHWc kernels) where ``ort_float_conv_modelled``.

    Per channel group (each input channel when there are fewer than a block, else each block
    of the dispatch's ``nchwc_block``, or ``POINTWISE_CHANNELS`` for an unpadded 1x1 conv) a
    partial sum is an ``fma`` chain from 0 over (kh, kw, channel in the group); the partials
    are added in channel order, then the bias (block 8: measured against onnxruntime,
    tests/int8/test_int8_ort_fp32.py; block 16: read from MLAS's AVX-512F kernel only).
    """
    block = _dispatch(dispatch).nchwc_block
    (sh, sw), (ph, pw), (dh, dw) = conv.stride, conv.padding, conv.dilation
    w = conv.weight.detach().float()
    o, c, kh, kw = w.shape
    xp = torch.nn.functional.pad(x.float(), [pw, pw, ph, ph])
    ho, wo = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1, (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    pointwise = (kh, kw) == (1, 1) and (ph, pw) == (0, 0)
    group = 1 if c < block else (POINTWISE_CHANNELS if pointwise else block)
    out = None
    for c0 in range(0, c, group):
        acc = torch.zeros(x.shape[0], o, ho, wo)
        for i in range(kh):
            for j in range(kw):
                for ch in range(c0, min(c, c0 + group)):
                    tap = xp[:, ch:ch + 1, i * dh:i * dh + sh * (ho - 1) + 1:sh, j * dw:j * dw + sw * (wo - 1) + 1:sw]
                    acc = _fma_f32(tap, w[:, ch, i, j].view(1, o, 1, 1), acc)
        out = acc if out is None else out + acc
    return out if conv.bias is None else out + conv.bias.detach().float().view(1, o, 1, 1)


def ort_float_layer(module: nn.Module, x: Any) -> torch.Tensor | None:
    """An fp32 layer as onnxruntime's own float kernels compute it on the assumed dispatch
    (for an AVX-512F conv: the source-only model, see the module doc), or None where qcal has
    no model of them (the caller runs torch's op instead)."""
    if not isinstance(x, torch.Tensor):
        return None
    if type(module) is nn.Linear and x.dim() == 2:
        return ort_float_gemm(x, module.weight, module.bias)
    if type(module) is not nn.Conv2d or x.dim() != 4:  # e.g. nn.Flatten: torch's op (before the dispatch
        return None                                    # lookup, which reads the environment each call)
    d = ort_dispatch()
    return ort_float_conv(x, module, d) if ort_float_conv_modelled(module, d) else None


def ort_fp32_kernels(graph: Any, act_qparams: list[tuple[float, int]],
                     act_dtype: str) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """{step name: ``ort_fp32_kernel``} for the fp32 layers onnxruntime quantizes."""
    steps = {s.name: s for s in graph.steps}
    dtype = torch.uint8 if act_dtype == "quint8" else torch.int8
    return {name: ort_fp32_kernel(graph.module.get_submodule(steps[name].target), act_qparams[i], act_qparams[o],
                                  steps[name].relu, dtype)
            for name, (i, o) in ort_quantized_fp32_layers(graph).items()}
