"""The ort flavour with int8 (qint8) activations against onnxruntime (``qcal.int8.backends.ort_s8``).

On x86 onnxruntime turns an int8 Q/DQ pair into uint8 only where the QuantizeLinear has one
reader (``QDQS8ToU8Transformer``) and fuses a layer only when both its sides are uint8: a
residual block's input (read by the block's first conv and by its Add) keeps int8, so the
conv producing it, the conv reading it and the Add run in float (MLAS SGEMM, K in slices of
128). These tests build that case, small, and compare qcal with this machine's onnxruntime.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from ort_cases import model, run
from torch import nn

import qcal
from qcal.analysis.bench_ort import ort_session
from qcal.export.onnx import onnx_bytes
from qcal.int8.backends.ort_s8 import _float_layer, _uint8_layer, mlas_sgemm_stride_k, ort_s8_plan
from qcal.int8.cpu.mlas import ORT_ENV_VAR
from qcal.int8.layer_ops import make_kernel

pytestmark = pytest.mark.usefixtures("one_thread", "no_cpu_env")
F32 = np.float32
SCHEMES = ["xnnpack_default", "xnnpack_per_tensor"]


class _Residual(nn.Module):
    """stem -> pre (1x1, its output read twice) -> expand (1x1, K = 144: two SGEMM slices) ->
    project -> + pre's output: the block's codes are the output (1,179,648 values a batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.pre = nn.Conv2d(32, 144, 1)
        self.expand = nn.Conv2d(144, 32, 1)
        self.project = nn.Conv2d(32, 144, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre(F.relu(self.stem(x)))
        return x + self.project(F.relu(self.expand(x)))


@pytest.fixture(scope="module")
def residual():
    torch.manual_seed(0)
    m = _Residual().eval()
    data = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    return m, data


def _ort_and_qcal(m, data, scheme, tmp_path=None):
    qm = qcal.calibrate(m, data, scheme, "ort", mode="graph")
    assert qm.mode == "graph"
    blob = onnx_bytes(qm, input_shape=(3, 32, 32))
    (y,) = ort_session(blob, 1).run(None, {"input": data[0].numpy()})
    return qm, blob, y


@pytest.mark.parametrize("scheme", SCHEMES)
def test_residual_block_with_int8_activations_matches_onnxruntime(machine_dispatch, residual, scheme):
    """The exported file in onnxruntime equals the ort flavour value for value (before qcal
    modelled the float layers: 29 and 5 of 1,179,648 values apart here, 6,952 of 8,000 on mobilenet_v2_like)."""
    m, data = residual
    qm, _, y = _ort_and_qcal(m, data, scheme)
    assert int((qm(data[0]).numpy() != y).sum()) == 0


@pytest.mark.parametrize("scheme", SCHEMES)
def test_plan_names_the_layers_onnxruntime_leaves_in_float(residual, scheme, tmp_path):
    """``ort_s8_plan``'s float steps are exactly the float Conv / Add nodes of onnxruntime's
    optimized graph; the other layers are fused (QLinearConv / QGemm / QLinearAdd)."""
    import onnxruntime as ort

    m, data = residual
    qm = qcal.calibrate(m, data, scheme, "ort", mode="graph")
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(onnx_bytes(qm, input_shape=(3, 32, 32)), so, providers=["CPUExecutionProvider"])
    nodes = onnx.load(str(tmp_path / "opt.onnx")).graph.node
    float_nodes = {n.name.rsplit("_", 1)[0] for n in nodes if n.op_type in ("Conv", "Gemm", "Add")}
    plan = ort_s8_plan(qm.graph)
    assert float_nodes == set(plan.float_steps) == {"pre", "expand", "add"}
    assert sum(n.op_type == "QLinearConv" for n in nodes) == 2  # stem and project, on uint8 codes


def _layer(rng, c, o, per_channel, relu):
    w = rng.integers(-127, 128, (o, c, 1, 1)).astype(np.int8)
    ws = torch.from_numpy((rng.random(o) * 0.02 + 1e-3).astype(F32)) if per_channel else \
        torch.tensor(float(rng.random() * 0.02 + 1e-3))
    return SimpleNamespace(
        name="layer", kind="conv", weight_q=torch.from_numpy(w), weight_scale=ws,
        weight_zero_point=torch.zeros(o if per_channel else 1, dtype=torch.int64),
        bias=torch.from_numpy((rng.standard_normal(o) * 0.5).astype(F32)),
        input_scale=float(F32(rng.random() * 0.05 + 1e-3)), input_zero_point=int(rng.integers(-20, 20)),
        output_scale=float(F32(rng.random() * 0.2 + 0.01)), output_zero_point=int(rng.integers(-10, 10)),
        relu=relu, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1)


def _float_conv_graph(layer):
    """int8 ``x`` -> DQ -> Conv -> [Relu] -> Q -> int8 ``y``: int8 on both sides, so onnxruntime
    runs the Conv in float (the graph input is no QuantizeLinear to convert)."""
    from qcal.int8 import requant_multipliers

    per_channel = layer.weight_scale.dim() == 1
    ws = layer.weight_scale.numpy().astype(F32) if per_channel else np.array(float(layer.weight_scale), F32)
    rq = requant_multipliers(layer.input_scale, layer.weight_scale if per_channel else float(layer.weight_scale),
                             layer.output_scale, layer.bias, backend="ort")
    o = layer.weight_q.shape[0]
    inits = {"xs": np.array(layer.input_scale, F32), "xz": np.array(layer.input_zero_point, np.int8),
             "w": layer.weight_q.numpy(), "ws": ws,
             "wz": np.zeros(o, np.int8) if per_channel else np.array(0, np.int8),
             "b": rq.bias_int32.numpy(), "bs": rq.act_times_w_scale.numpy(), "bz": np.zeros(o, np.int32),
             "ys": np.array(layer.output_scale, F32), "yz": np.array(layer.output_zero_point, np.int8)}
    axis = {"axis": 0} if per_channel else {}
    nodes = [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xf"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wf"], **axis),
             helper.make_node("DequantizeLinear", ["b", "bs", "bz"], ["bf"], axis=0),
             helper.make_node("Conv", ["xf", "wf", "bf"], ["yf"])]
    last = "yf"
    if layer.relu:
        nodes.append(helper.make_node("Relu", ["yf"], ["yr"]))
        last = "yr"
    nodes.append(helper.make_node("QuantizeLinear", [last, "ys", "yz"], ["y"]))
    return model(nodes, [("x", TensorProto.INT8)], [("y", TensorProto.INT8)], inits)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), c=st.sampled_from([1, 7, 64, 128, 129, 144, 256, 300, 520]),
       o=st.integers(2, 40), hw=st.sampled_from([(2, 3), (7, 7), (9, 16), (16, 16)]),
       n=st.integers(1, 3), per_channel=st.booleans(), relu=st.booleans())
def test_float_pointwise_conv_matches_onnxruntime(machine_dispatch, seed, c, o, hw, n, per_channel, relu):
    """A 1x1 conv onnxruntime leaves in float: MLAS's SGEMM K slices (``mlas_sgemm_stride_k``:
    128, doubled for few output pixels), fma chains, the bias last, then QuantizeLinear. One
    output channel or one output pixel runs MLAS's M1 kernels, not modelled (see ort_s8)."""
    rng = np.random.default_rng(seed)
    layer = _layer(rng, c, o, per_channel, relu)
    x = rng.integers(-128, 128, (n, c, *hw)).astype(np.int8)
    (y,) = run(_float_conv_graph(layer), {"x": x})
    run_layer = _float_layer(layer, lambda x_q: None)
    mine = run_layer(torch.from_numpy(x), False)
    assert int((mine.numpy() != y).sum()) == 0


def test_sgemm_k_slices():
    assert [mlas_sgemm_stride_k(n, k) for n, k in [(784, 144), (49, 160), (196, 384), (1, 520), (3136, 24)]] == \
        [128, 256, 128, 1024, 32]


def test_saturating_dispatch_runs_fused_layers_on_uint8_codes(monkeypatch):
    """Where MLAS's U8S8 kernels saturate int16 pairs (AVX2; AVX-512 without VNNI: emulated here
    with QCAL_ORT_CPU), a fused int8 layer runs on the uint8 codes onnxruntime converts it to
    (q + 128): codes near 127 with weights near +-127 overflow as uint8 pairs, not as int8 ones."""
    rng = np.random.default_rng(3)
    layer = _layer(rng, 64, 16, True, False)
    layer.weight_q = torch.from_numpy(np.where(rng.random((16, 64, 1, 1)) < 0.5, 127, -127).astype(np.int8))
    layer.output_scale = 40.0
    x = torch.from_numpy(rng.integers(100, 128, (2, 64, 4, 4)).astype(np.int8))
    kernel = make_kernel(layer, "ort")
    fused = _uint8_layer(layer, kernel)
    monkeypatch.setenv(ORT_ENV_VAR, "avx512_vnni")
    assert torch.equal(fused(x, False), kernel(x, False))  # exact sums: the int8 kernel's codes
    monkeypatch.setenv(ORT_ENV_VAR, "avx2")
    res = fused(x, True)
    assert res.saturated_pairs > 0
    assert not torch.equal(res.out, kernel(x, False))
    shifted = make_kernel(SimpleNamespace(**{**vars(layer), "input_zero_point": layer.input_zero_point + 128,
                                             "output_zero_point": layer.output_zero_point + 128}), "ort")
    u8 = (x.view(torch.uint8) ^ 0x80)
    assert torch.equal(res.out, (shifted(u8, False).view(torch.uint8) ^ 0x80).view(torch.int8))
