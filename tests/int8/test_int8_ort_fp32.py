"""What onnxruntime does to a recipe's fp32 layers, against onnxruntime on hand-built graphs.

A float Gemm/Conv between a DequantizeLinear and a QuantizeLinear is quantized by
onnxruntime's WeightBiasQuantization (weights and codes checked against its optimized
graph, outputs against qcal's ``ort_fp32_kernel``); a float Gemm elsewhere runs MLAS SGEMM,
which ``ort_float_gemm`` reproduces bit for bit, and a float Conv MLAS's NCHWc kernels, whose
model depends on the MLAS dispatch: each comparison with this machine's onnxruntime runs on
the dispatches it holds for and is skipped, naming it, on the others.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from ort_cases import model, needs_float_kernels, run

from qcal.int8.backends.ort import ort_quantize
from qcal.int8.backends.ort_fp32 import (
    NCHWC_BLOCK,
    POINTWISE_CHANNELS,
    SGEMM_STRIDE_K,
    ort_float_conv,
    ort_float_conv_modelled,
    ort_float_conv_reproduced,
    ort_float_gemm,
    ort_float_layer,
    ort_fp32_kernel,
    ort_fp32_layers,
    ort_fp32_notes,
    ort_weight_qparams,
)
from qcal.int8.cpu.mlas import DISPATCHES, ORT_ENV_VAR

pytestmark = pytest.mark.usefixtures("one_thread", "no_cpu_env")
F32 = np.float32
BLOCK16 = DISPATCHES["avx512"].nchwc_block




@pytest.fixture(scope="module")
def fma3_machine(machine_dispatch):
    """This machine's dispatch, which must run MLAS's FMA3 float kernels (else skipped, named)."""
    needs_float_kernels(machine_dispatch, "FMA3")
    return machine_dispatch


@pytest.fixture(scope="module")
def avx512f_machine(machine_dispatch):
    """This machine's dispatch, which must run MLAS's AVX512F float kernels (else skipped, named)."""
    needs_float_kernels(machine_dispatch, "AVX512F")
    return machine_dispatch


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
def test_float_gemm_is_mlas_sgemm(machine_dispatch, m, k, n, bias, seed):
    """On every dispatch: the FMA3 (AMD EPYC) and AVX512F (Intel Xeon) SGEMM kernels alike."""
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


def _float_conv_against_onnxruntime(dispatch, c, o, k, stride, pad, dilation, bias, seed):
    """(the conv, the values where ``ort_float_conv`` on ``dispatch`` differs from this
    machine's float Conv: NCHWc kernels after its NchwcTransformer), on a shape the model covers."""
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(c, o, k, stride=stride, padding=pad, dilation=dilation, bias=bias)
    assert ort_float_conv_modelled(conv, dispatch)
    x = torch.randn(3, c, 9, 9)
    w = conv.weight.detach().numpy()
    inits = {"w": w, **({"b": conv.bias.detach().numpy()} if bias else {})}
    node = helper.make_node("Conv", ["x", "w", *(["b"] if bias else [])], ["y"], strides=[stride] * 2,
                            pads=[pad] * 4, dilations=[dilation] * 2)
    (theirs,) = run(model([node], [("x", TensorProto.FLOAT)], [("y", TensorProto.FLOAT)], inits), {"x": x.numpy()})
    return conv, int((ort_float_conv(x, conv, dispatch).numpy() != theirs).sum())


@settings(max_examples=60, deadline=None)
@given(c=st.sampled_from([1, 2, 3, 5, NCHWC_BLOCK, 2 * NCHWC_BLOCK, 2 * POINTWISE_CHANNELS + NCHWC_BLOCK]),
       o=st.sampled_from([NCHWC_BLOCK, 4 * NCHWC_BLOCK]),
       k=st.integers(1, 3), stride=st.integers(1, 2), pad=st.integers(0, 1), dilation=st.integers(1, 2),
       bias=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_float_conv_is_mlas_nchwc(fma3_machine, c, o, k, stride, pad, dilation, bias, seed):
    """The FMA3 kernels (blocks of 8), checked on hardware: reproduced bit for bit."""
    conv, differing = _float_conv_against_onnxruntime(fma3_machine, c, o, k, stride, pad, dilation, bias, seed)
    assert ort_float_conv_reproduced(conv, fma3_machine) and differing == 0


@settings(max_examples=60, deadline=None)
@given(c=st.sampled_from([1, 3, NCHWC_BLOCK, BLOCK16, 2 * BLOCK16, 2 * POINTWISE_CHANNELS + BLOCK16]),
       o=st.sampled_from([BLOCK16, 4 * BLOCK16]),
       k=st.integers(1, 3), stride=st.integers(1, 2), pad=st.integers(0, 1), dilation=st.integers(1, 2),
       bias=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_avx512f_float_conv_model_is_mlas_nchwc(avx512f_machine, c, o, k, stride, pad, dilation, bias, seed):
    """The AVX512F kernels (blocks of 16), modelled from MLAS's source and checked here on
    hardware (an Intel Xeon, AMX dispatch: its float kernels are every AVX-512F dispatch's)."""
    conv, differing = _float_conv_against_onnxruntime(avx512f_machine, c, o, k, stride, pad, dilation, bias, seed)
    assert ort_float_conv_reproduced(conv, avx512f_machine) and differing == 0


def test_float_conv_outside_the_reproduced_shapes_is_named():
    for fma3 in ("avx2", "avx_vnni"):
        assert ort_float_conv_reproduced(torch.nn.Conv2d(16, 16, 3), fma3)
        assert not ort_float_conv_reproduced(torch.nn.Conv2d(4, 6, 3), fma3)  # output channels not a block multiple
        assert not ort_float_conv_reproduced(torch.nn.Conv2d(12, 16, 3), fma3)  # input channels neither < nor x block
        assert not ort_float_conv_reproduced(torch.nn.Conv2d(8, 8, 3, groups=8), fma3)  # depthwise
    for avx512f in ("avx512", "avx512f", "avx512_vnni", "amx"):  # blocks of 16
        assert ort_float_conv_reproduced(torch.nn.Conv2d(12, 16, 3), avx512f)  # 12 < 16: the NCHW-input kernel
        assert not ort_float_conv_modelled(torch.nn.Conv2d(8, 8, 1), avx512f)  # 8 output channels: half a block
        assert ort_float_conv_reproduced(torch.nn.Conv2d(16, 16, 3), avx512f)
        assert not ort_float_conv_reproduced(torch.nn.Conv2d(16, 16, 3, groups=16), avx512f)  # depthwise


def test_block_16_sums_another_way():
    """8 input channels are one NCHWc block with FMA3 but 8 partial sums of the NCHW-input
    kernel with AVX-512F: the two models round differently (count printed), both near torch."""
    torch.manual_seed(0)
    conv, x = torch.nn.Conv2d(8, 16, 3, padding=1), torch.randn(4, 8, 12, 12)
    fma3, avx512f = ort_float_conv(x, conv, "avx2"), ort_float_conv(x, conv, "avx512")
    differing = int((fma3 != avx512f).sum())
    print("FMA3 vs AVX512F NCHWc model: differing values", differing, "of", fma3.numel())
    assert differing > 0
    with torch.no_grad():
        torch.testing.assert_close(avx512f, conv(x), rtol=1e-5, atol=1e-5)


def test_block_16_model_gives_a_xeons_onnxruntime_values():
    """The one AVX-512F measurement qcal has (onnxruntime 1.32 on an Intel Xeon, AVX-512 + AMX:
    Conv 8 -> 8, 1x1, torch seed 0, x = randn(3, 8, 9, 9)): its first and last three outputs,
    and its 954 values differing from the FMA3 model. 8 < 16 input channels run the NCHW-input
    kernel there, one partial sum per channel (kept as a record that runs on any CPU; on an
    AVX-512F machine the hypothesis test above checks the model on random shapes)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 8, 1, bias=False)
    x = torch.randn(3, 8, 9, 9)
    ours = ort_float_conv(x, conv, "amx").numpy().ravel()
    xeon = np.array([-4.02741939e-01, -7.36369342e-02, 4.31425661e-01, 8.15469027e-02, 7.80875742e-01,
                     4.25973892e-01], F32)
    assert np.array_equal(np.concatenate([ours[:3], ours[-3:]]), xeon)
    assert int((ours != ort_float_conv(x, conv, "avx2").numpy().ravel()).sum()) == 954


def _one_conv_graph(conv: torch.nn.Conv2d, fc: torch.nn.Linear):
    """The shape of a recipe's program ``ort_fp32_layers`` reads: input -> fp32 conv, input -> fp32 linear."""
    from types import SimpleNamespace as NS

    module = torch.nn.Module()
    module.c, module.fc = conv, fc
    steps = [NS(name="x", kind="input", op="placeholder", target="x", refs=[]),
             NS(name="c", kind="float", op="call_module", target="c", refs=["x"]),
             NS(name="fc", kind="float", op="call_module", target="fc", refs=["x"])]
    return NS(steps=steps, module=module)


def test_each_dispatch_names_the_float_convs_it_does_not_reproduce(monkeypatch):
    """Under QCAL_ORT_CPU (or on such a CPU) a float Conv the NCHWc model covers is reproduced
    with that dispatch's block (8 with FMA3, 16 with AVX-512F: different sums); one it does not
    cover (depthwise here) is "not reproduced", what ``export --verify`` and the recipe notes
    report, naming the dispatch; the float Gemm stays reproduced."""
    torch.manual_seed(1)
    conv, x = torch.nn.Conv2d(3, 16, 3), torch.randn(2, 3, 8, 8)
    graph = _one_conv_graph(conv, torch.nn.Linear(4, 2))
    depthwise = _one_conv_graph(torch.nn.Conv2d(3, 3, 3, groups=3), torch.nn.Linear(4, 2))
    for dispatch in ("avx2", "avx512"):
        monkeypatch.setenv(ORT_ENV_VAR, dispatch)
        assert ort_fp32_layers(graph) == {"c": "float Conv", "fc": "float Gemm"}
        assert torch.equal(ort_float_layer(conv, x), ort_float_conv(x, conv, dispatch))
        assert ort_fp32_layers(depthwise) == {"c": "float Conv (not reproduced)", "fc": "float Gemm"}
        (note,) = [n for n in ort_fp32_notes(depthwise) if "not reproduce" in n]
        assert f"MLAS dispatch {dispatch}" in note and "outside the NCHWc model" in note


@settings(max_examples=25, deadline=None)
@given(lo=st.floats(-2.0, 1.0), span=st.floats(1e-3, 3.0), n=st.integers(1, 24), k=st.integers(1, 70),
       seed=st.integers(0, 2**31 - 1))
def test_weight_bias_quantization_matches_onnxruntime(machine_dispatch, tmp_path_factory, lo, span, n, k, seed):
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
