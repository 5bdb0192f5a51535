"""What onnxruntime does to a recipe's fp32 layers, against onnxruntime on hand-built graphs.

A float Gemm/Conv between a DequantizeLinear and a QuantizeLinear is quantized by
onnxruntime's WeightBiasQuantization (weights and codes checked against its optimized
graph, outputs against qcal's ``ort_fp32_kernel``); a float Gemm elsewhere runs MLAS SGEMM,
which ``ort_float_gemm`` reproduces bit for bit.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from ort_cases import model, run

from qcal.int8.ort import ort_quantize
from qcal.int8.ort_fp32 import (
    NCHWC_BLOCK,
    POINTWISE_CHANNELS,
    SGEMM_STRIDE_K,
    ort_float_conv,
    ort_float_conv_reproduced,
    ort_float_gemm,
    ort_fp32_kernel,
    ort_weight_qparams,
)

pytestmark = pytest.mark.usefixtures("one_thread")
F32 = np.float32


def _float_gemm_model(w: np.ndarray, b: np.ndarray | None, qdq: tuple[float, int, float, int] | None):
    """x -> Gemm(float w, float b, transB=1) -> y, or with ``qdq`` uint8 x -> DQ -> Gemm -> Q -> uint8 y."""
    inits = {"w": w, **({"b": b} if b is not None else {})}
    gemm_in = ["x", "w", *(["b"] if b is not None else [])]
    nodes = []
    if qdq is not None:
        xs, xz, ys, yz = qdq
        inits.update(xs=F32(xs), xz=np.uint8(xz), ys=F32(ys), yz=np.uint8(yz))
        nodes.append(helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xd"]))
        gemm_in[0] = "xd"
    nodes.append(helper.make_node("Gemm", gemm_in, ["yf" if qdq else "y"], transB=1))
    if qdq is not None:
        nodes.append(helper.make_node("QuantizeLinear", ["yf", "ys", "yz"], ["y"]))
    dtype = TensorProto.UINT8 if qdq else TensorProto.FLOAT
    return model(nodes, [("x", dtype)], [("y", dtype)], inits)


@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 9), k=st.integers(1, 2 * SGEMM_STRIDE_K + 40), n=st.integers(1, 40),
       bias=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_float_gemm_is_mlas_sgemm(m, k, n, bias, seed):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((m, k)).astype(F32), (rng.standard_normal((n, k)) * 0.1).astype(F32)
    b = rng.standard_normal(n).astype(F32) if bias else None
    (theirs,) = run(_float_gemm_model(w, b, None), {"x": x})
    ours = ort_float_gemm(torch.from_numpy(x), torch.from_numpy(w), None if b is None else torch.from_numpy(b))
    assert int((ours.numpy() != theirs).sum()) == 0


def test_float_gemm_is_not_torch_linear():
    """The reproduction is needed: torch's linear sums in another order (count printed)."""
    rng = np.random.default_rng(0)
    x, w, b = (torch.from_numpy(rng.standard_normal(s).astype(F32)) for s in ((64, 300), (10, 300), (10,)))
    differing = int((ort_float_gemm(x, w, b) != torch.nn.functional.linear(x, w, b)).sum())
    print("torch linear vs MLAS SGEMM: differing values", differing, "of 640")
    assert differing > 0


@settings(max_examples=60, deadline=None)
@given(c=st.sampled_from([1, 2, 3, 5, NCHWC_BLOCK, 2 * NCHWC_BLOCK, 2 * POINTWISE_CHANNELS + NCHWC_BLOCK]), o=st.sampled_from([NCHWC_BLOCK, 4 * NCHWC_BLOCK]),
       k=st.integers(1, 3), stride=st.integers(1, 2), pad=st.integers(0, 1), dilation=st.integers(1, 2),
       bias=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_float_conv_is_mlas_nchwc(c, o, k, stride, pad, dilation, bias, seed):
    """onnxruntime's float Conv (NCHWc kernels after its NchwcTransformer) on the shapes
    ``ort_float_conv_reproduced`` accepts."""
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(c, o, k, stride=stride, padding=pad, dilation=dilation, bias=bias)
    assert ort_float_conv_reproduced(conv)
    x = torch.randn(3, c, 9, 9)
    w = conv.weight.detach().numpy()
    inits = {"w": w, **({"b": conv.bias.detach().numpy()} if bias else {})}
    node = helper.make_node("Conv", ["x", "w", *(["b"] if bias else [])], ["y"], strides=[stride] * 2,
                            pads=[pad] * 4, dilations=[dilation] * 2)
    (theirs,) = run(model([node], [("x", TensorProto.FLOAT)], [("y", TensorProto.FLOAT)], inits), {"x": x.numpy()})
    assert int((ort_float_conv(x, conv).numpy() != theirs).sum()) == 0


def test_float_conv_outside_the_reproduced_shapes_is_named():
    assert not ort_float_conv_reproduced(torch.nn.Conv2d(4, 6, 3))  # output channels not a block multiple
    assert not ort_float_conv_reproduced(torch.nn.Conv2d(12, 16, 3))  # input channels neither < nor x block
    assert not ort_float_conv_reproduced(torch.nn.Conv2d(8, 8, 3, groups=8))  # depthwise


@settings(max_examples=25, deadline=None)
@given(lo=st.floats(-2.0, 1.0), span=st.floats(1e-3, 3.0), n=st.integers(1, 24), k=st.integers(1, 70),
       seed=st.integers(0, 2**31 - 1))
def test_weight_bias_quantization_matches_onnxruntime(tmp_path_factory, lo, span, n, k, seed):
    """onnxruntime's own int8 weights of a float Gemm between DQ and Q (read from its optimized
    graph: QGemm's B, b_scale, b_zero_point) and the layer's output codes."""
    rng = np.random.default_rng(seed)
    w = (lo + span * rng.random((n, k))).astype(F32)
    b = rng.standard_normal(n).astype(F32)
    x = rng.integers(0, 256, (7, k)).astype(np.uint8)
    xs, xz, ys, yz = 0.02, int(rng.integers(0, 60)), 0.05 + float(rng.random()), int(rng.integers(0, 200))
    opt = str(tmp_path_factory.mktemp("wbq") / "opt.onnx")
    (theirs,) = run(_float_gemm_model(w, b, (xs, xz, ys, yz)), {"x": x}, optimized=opt)
    g = onnx.load(opt).graph
    (qgemm,) = [nd for nd in g.node if nd.op_type == "QGemm"]  # onnxruntime quantized the float Gemm
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    ws, wz = ort_weight_qparams(torch.from_numpy(w))
    assert (F32(inits[qgemm.input[4]]), int(inits[qgemm.input[5]])) == (F32(ws), wz)
    codes = ort_quantize(torch.from_numpy(w), ws, wz, torch.int8).numpy()
    assert np.array_equal(inits[qgemm.input[3]].reshape(codes.shape), codes)
    layer = torch.nn.Linear(k, n)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(w))
        layer.bias.copy_(torch.from_numpy(b))
    run_layer = ort_fp32_kernel(layer, (xs, xz), (ys, yz), relu=False)
    ours = ort_quantize(run_layer((torch.from_numpy(x).int() - xz).float() * F32(xs)), ys, yz)
    assert int((ours.numpy() != theirs).sum()) == 0


def test_weight_qparams_of_a_constant_weight():
    """All-zero weights: onnxruntime's rule gives scale 1 (max == min) and zero point -128."""
    assert ort_weight_qparams(torch.zeros(3, 4)) == (1.0, -128)
    s, z = ort_weight_qparams(torch.tensor([[-0.5, 1.5]]))
    assert s == float(F32(2.0) / F32(255.0)) and z == -64
