"""backend="ort" op by op against onnxruntime on single-op QDQ graphs: 0 differing values.

Each graph is what onnxruntime fuses (DQ -> Conv -> Q into QLinearConv, DQ -> Gemm -> Q into
QGemm, DQ -> Add -> Q into QLinearAdd, ...); the fusion itself is checked too, so a test
never passes on onnxruntime's float fallback by accident.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from ort_cases import fused_ops, model, qdq_layer, run

import qcal.int8 as qi
from qcal.int8.backends.ort import (
    ort_add,
    ort_clip,
    ort_environment,
    ort_global_avg_pool,
    ort_instruction_set,
    ort_quantize,
    ort_saturates,
)
from qcal.int8.cpu.flags import cpu_flags
from qcal.int8.cpu.isa import AssumedCpu, assumed_cpu, emulating
from qcal.int8.cpu.mlas import (
    DISPATCHES,
    ORT_ENV_VAR,
    mlas_dispatch_from_flags,
    ort_dispatch_report,
)
from qcal.qparams import quantize

pytestmark = pytest.mark.usefixtures("one_thread", "no_cpu_env")
F32 = np.float32




def _layer_case(rng, kind, c, o, k, groups, per_channel, wzp, hi):
    x = rng.integers(0, hi + 1, (3, c, 7, 7) if kind == "conv" else (5, c)).astype(np.uint8)
    shape = (o, c // groups, k, k) if kind == "conv" else (o, c)
    w = rng.integers(-128, 128, shape).astype(np.int8)
    w_scale = (rng.random(o) * 0.02 + 1e-3).astype(F32) if per_channel else F32(rng.random() * 0.02 + 1e-3)
    w_zp = np.zeros(o, np.int8) if per_channel else np.int8(wzp)
    bias = torch.from_numpy((rng.standard_normal(o) * 2).astype(F32))
    xs, xz = F32(rng.random() * 0.05 + 1e-3), int(rng.integers(0, 40))
    return x, w, w_scale, w_zp, bias, xs, xz


def _ort_layer(kind, x, w, w_scale, w_zp, bias, xs, xz, ys, yz, tmp_path, **attrs):
    ws = torch.from_numpy(np.atleast_1d(w_scale)) if np.ndim(w_scale) else float(w_scale)
    rq = qi.requant_multipliers(float(xs), ws, float(ys), bias, backend="ort")
    m = qdq_layer(kind, w, w_scale, w_zp, rq.bias_int32.numpy(), rq.act_times_w_scale.numpy(), xs, xz, ys, yz, **attrs)
    path = str(tmp_path / "opt.onnx")
    (y,) = run(m, {"x": x}, optimized=path)
    fused = "QLinearConv" if kind == "conv" else "QGemm"
    assert fused in fused_ops(path), fused_ops(path)
    return y


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), c=st.sampled_from([1, 3, 4, 8, 16]), o=st.sampled_from([8, 16, 32]),
       k=st.sampled_from([1, 3]), depthwise=st.booleans(), per_channel=st.booleans(), wzp=st.integers(-3, 3),
       stride=st.sampled_from([1, 2]), hi=st.sampled_from([127, 255]))
def test_conv_matches_onnxruntime(machine_dispatch, tmp_path_factory, seed, c, o, k, depthwise, per_channel, wzp, stride, hi):
    rng = np.random.default_rng(seed)
    groups = c if depthwise else 1
    o = c if depthwise else o
    x, w, w_scale, w_zp, bias, xs, xz = _layer_case(rng, "conv", c, o, k, groups, per_channel, wzp, hi)
    ys, yz = F32(rng.random() * 0.5 + 0.05), int(rng.integers(0, 256))
    pad = k // 2
    y = _ort_layer("conv", x, w, w_scale, w_zp, bias, xs, xz, ys, yz, tmp_path_factory.mktemp("c"),
                   pads=[pad] * 4, strides=[stride] * 2, group=groups)
    ws = torch.from_numpy(w_scale) if per_channel else float(w_scale)
    zp = torch.from_numpy(w_zp.astype(np.int64)) if per_channel else int(w_zp)
    mine = qi.conv2d(torch.from_numpy(x), float(xs), xz, torch.from_numpy(w), ws, zp, bias, float(ys), yz,
                     stride=stride, padding=pad, groups=groups, backend="ort")
    assert int((mine.numpy() != y).sum()) == 0


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31), c=st.sampled_from([7, 16, 64, 129]), o=st.sampled_from([3, 10, 64]),
       per_channel=st.booleans(), wzp=st.integers(-3, 3), hi=st.sampled_from([127, 255]))
def test_gemm_matches_onnxruntime(machine_dispatch, tmp_path_factory, seed, c, o, per_channel, wzp, hi):
    rng = np.random.default_rng(seed)
    x, w, w_scale, w_zp, bias, xs, xz = _layer_case(rng, "linear", c, o, 1, 1, per_channel, wzp, hi)
    ys, yz = F32(rng.random() * 0.5 + 0.05), int(rng.integers(0, 256))
    y = _ort_layer("linear", x, w, w_scale, w_zp, bias, xs, xz, ys, yz, tmp_path_factory.mktemp("g"), transB=1)
    ws = torch.from_numpy(w_scale) if per_channel else float(w_scale)
    zp = torch.from_numpy(w_zp.astype(np.int64)) if per_channel else int(w_zp)
    mine = qi.linear(torch.from_numpy(x), float(xs), xz, torch.from_numpy(w), ws, zp, bias, float(ys), yz,
                     backend="ort")
    assert int((mine.numpy() != y).sum()) == 0


def test_u8s8_saturates_as_the_dispatch_says_and_not_with_x64quantprecision(machine_dispatch, tmp_path):
    """Activations up to 255 with +-128 weights: the int16 pair sums overflow. onnxruntime's
    default kernel saturates them exactly as the pair model says where this machine's MLAS
    dispatch saturates (AVX2, AVX-512 without VNNI) and computes the exact accumulator where it
    does not (VNNI, AMX); with ``session.x64quantprecision=1`` it is exact everywhere."""
    rng = np.random.default_rng(1)
    x = rng.integers(200, 256, (2, 16, 6, 6)).astype(np.uint8)
    w = np.where(rng.random((16, 16, 3, 3)) < 0.5, 127, -128).astype(np.int8)
    exact = torch.nn.functional.conv2d(torch.from_numpy(x).double() - 3, torch.from_numpy(w).double(), padding=1)
    ys = F32(float(exact.abs().max()) / 120)
    m = qdq_layer("conv", w, F32(1.0), np.int8(0), None, None, F32(1.0), 3, ys, 128, pads=[1] * 4)
    args = (torch.from_numpy(x), 1.0, 3, torch.from_numpy(w), 1.0, 0, None, float(ys), 128)
    saturating = qi.conv2d(*args, padding=1, backend="ort", saturate=True).numpy()
    exact_out = qi.conv2d(*args, padding=1, backend="ort", saturate=False).numpy()
    assert int((saturating != exact_out).sum()) > 100  # the case does saturate
    (default,) = run(m, {"x": x})
    (precise,) = run(m, {"x": x}, options={"session.x64quantprecision": "1"})
    assert ort_saturates() is machine_dispatch.saturates
    assert int((default != (saturating if machine_dispatch.saturates else exact_out)).sum()) == 0
    assert int((precise != exact_out).sum()) == 0



def _predicts_saturation(saturates: bool) -> None:
    """The ort conv prediction on a case whose int16 pairs overflow follows ``saturates``."""
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.integers(200, 256, (2, 16, 6, 6)).astype(np.uint8))
    w = torch.from_numpy(np.where(rng.random((16, 16, 3, 3)) < 0.5, 127, -128).astype(np.int8))
    args = (x, 1.0, 3, w, 1.0, 0, None, 40.0, 128)
    predicted = qi.conv2d(*args, padding=1, backend="ort")
    assert torch.equal(predicted, qi.conv2d(*args, padding=1, backend="ort", saturate=saturates))
    assert not torch.equal(predicted, qi.conv2d(*args, padding=1, backend="ort", saturate=not saturates))


@pytest.mark.parametrize(("value", "isa", "saturates", "block"), [
    ("amx", "AMX", False, 16), ("AVX512_VNNI", "AVX512-VNNI", False, 16), ("avx512f", "AVX512 (no VNNI)", True, 16),
    (" avx512 ", "AVX512 (no VNNI)", True, 16), ("avx-vnni", "AVX-VNNI", False, 8), ("avx2", "AVX2 (no VNNI)", True, 8)])
def test_qcal_ort_cpu_names_mlas_dispatch(monkeypatch, value, isa, saturates, block):
    """QCAL_ORT_CPU picks MLAS's dispatch on any machine (AMX and AVX-VNNI too, which QCAL_CPU
    cannot say) and changes the ort flavour only: FBGEMM's assumed set stays this machine's."""
    fbgemm = assumed_cpu().isa
    monkeypatch.setenv(ORT_ENV_VAR, value)
    assert ort_instruction_set() == isa and ort_saturates() is saturates and ort_saturates("depthwise") is False
    env = ort_environment()
    assert env["ort_instruction_set"] == isa and env["ort_float_kernels"].endswith(f"(NCHWc block {block})")
    assert assumed_cpu().isa == fbgemm
    _predicts_saturation(saturates)


@pytest.mark.parametrize("value", ["sse4", "avx512_bf16", "AVX2 (no VNNI)"])
def test_qcal_ort_cpu_rejects_unknown_names(monkeypatch, value):
    monkeypatch.setenv(ORT_ENV_VAR, value)
    message = f"QCAL_ORT_CPU {value!r} is not an MLAS dispatch; expected one of: amx, avx512_vnni, avx512"
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ort_instruction_set()
    with pytest.raises(ValueError, match="QCAL_ORT_CPU"):
        assumed_cpu()  # checked where the CPU is read, before any job is sent


def test_qcal_ort_cpu_comes_before_qcal_cpu(monkeypatch):
    monkeypatch.setenv("QCAL_CPU", "avx512_vnni")
    monkeypatch.setenv(ORT_ENV_VAR, "avx2")
    assert ort_instruction_set() == "AVX2 (no VNNI)" and ort_saturates()
    assert assumed_cpu().isa == "avx512_vnni"  # FBGEMM keeps QCAL_CPU's set
    monkeypatch.setenv("QCAL_CPU", "avx2")
    monkeypatch.setenv(ORT_ENV_VAR, "amx")
    assert ort_instruction_set() == "AMX" and not ort_saturates()
    monkeypatch.delenv(ORT_ENV_VAR)
    assert ort_instruction_set() == "AVX2 (no VNNI)"  # unset: QCAL_CPU's FBGEMM name decides


@pytest.mark.parametrize(("cpu", "isa", "saturates"), [
    ("avx2", "AVX2 (no VNNI)", True), ("avx512", "AVX512 (no VNNI)", True),
    ("avx512_vnni", "AVX512-VNNI", False), ("avx512_vnni_ymm", "AVX512-VNNI", False)])
def test_qcal_cpu_decides_the_ort_prediction(monkeypatch, cpu, isa, saturates):
    """QCAL_CPU (the CLI's --cpu) predicts onnxruntime on another CPU: the saturating U8S8
    kernels without VNNI, the exact VNNI kernels with it; saved runs record the set assumed."""
    monkeypatch.setenv("QCAL_CPU", cpu)
    assert ort_instruction_set() == isa and ort_saturates() is saturates
    assert ort_saturates("depthwise") is False  # MLAS's depthwise kernels widen first everywhere
    assert ort_environment()["ort_instruction_set"] == isa
    _predicts_saturation(saturates)


def test_a_dask_clients_cpu_decides_on_the_worker(monkeypatch):
    """A job run under ``emulating`` (a client's CPU read from its /proc/cpuinfo, from before
    AssumedCpu carried MLAS's dispatch) predicts that CPU's MLAS kernels, not the worker's
    hardware or QCAL_ORT_CPU."""
    monkeypatch.setenv(ORT_ENV_VAR, "amx")
    client = AssumedCpu("avx512_vnni", "avx512_vnni", "/proc/cpuinfo")
    with emulating(client):
        assert ort_instruction_set() == "AVX512-VNNI" and not ort_saturates()


@pytest.mark.parametrize(("client_env", "isa"), [("amx", "AMX"), ("avx_vnni", "AVX-VNNI"), ("avx512f", "AVX512 (no VNNI)")])
def test_the_clients_mlas_dispatch_travels_with_its_job(monkeypatch, client_env, isa):
    """The client's QCAL_ORT_CPU is read into its ``assumed_cpu()``, which a Dask job carries
    (pickled) and runs under; the worker's own QCAL_ORT_CPU and QCAL_CPU do not count."""
    from qcal.analysis.cluster import _run_job

    monkeypatch.setenv(ORT_ENV_VAR, client_env)
    job_cpu = pickle.loads(pickle.dumps(assumed_cpu()))
    monkeypatch.setenv(ORT_ENV_VAR, "avx2")  # the worker's environment
    monkeypatch.setenv("QCAL_CPU", "avx512_vnni")
    assert _run_job(lambda shared, payload: (ort_instruction_set(), ort_saturates()), None, None, job_cpu) == (
        isa, DISPATCHES[job_cpu.mlas].saturates)
    assert ort_instruction_set() == "AVX2 (no VNNI)"  # outside the job, the worker's


@pytest.mark.parametrize(("flags", "dispatch"), [
    ({"avx2", "fma"}, "avx2"),
    ({"avx2", "fma", "avx_vnni"}, "avx_vnni"),
    ({"avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl"}, "avx512"),
    ({"avx2", "fma", "avx_vnni", "avx512f", "avx512bw", "avx512dq", "avx512vl"}, "avx512"),  # Avx512Core overrides
    ({"avx2", "fma", "avx512f"}, "avx512"),  # AVX-512F alone: AVX512F float kernels, saturating int8
    ({"avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni"}, "avx512_vnni"),
    ({"avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "amx_int8"}, "avx512_vnni"),
    ({"avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "avx_vnni", "amx_int8",
      "amx_tile", "avx512_bf16", "avx512_fp16"}, "amx"),
    ({"avx", "sse4_2"}, None)])
def test_mlas_dispatch_from_cpuinfo_flags(flags, dispatch):
    """platform.cpp's order, on flag sets of real CPUs (EPYC, Alder Lake, Skylake-SP, Xeon Phi,
    Cascade Lake, Sapphire Rapids) and one without AVX2 (not modelled)."""
    assert mlas_dispatch_from_flags(flags) == dispatch


def test_this_machine_without_qcal_cpu(machine_dispatch):
    """Unset, /proc/cpuinfo decides MLAS's dispatch, whatever FBGEMM's set (AVX-VNNI or AMX
    select MLAS's non-saturating kernels, which QCAL_CPU's FBGEMM names cannot say)."""
    assert mlas_dispatch_from_flags(cpu_flags()) == machine_dispatch.name == assumed_cpu().mlas
    assert ort_instruction_set() == machine_dispatch.int8 and ort_saturates() is machine_dispatch.saturates


def test_dispatch_report_says_how_each_dispatch_was_checked(monkeypatch):
    rows = ort_dispatch_report()
    assert [r[0] for r in rows] == ["avx2", "avx_vnni", "avx512", "avx512_vnni", "amx"]
    for name, _kernels, saturates, floats, checked in rows:
        monkeypatch.setenv(ORT_ENV_VAR, name)
        assert ort_saturates() is saturates and ort_instruction_set() == DISPATCHES[name].int8
        assert checked.startswith(("hardware (", "source only", "int8 source only"))
        assert ("block 16" in floats) == ("AVX512F" in floats)
        assert DISPATCHES[name].float_conv_checked  # FMA3 on an AMD EPYC, AVX512F on an Intel Xeon
    assert rows[0][4] == "hardware (AMD EPYC AVX2)" and rows[4][4].startswith("hardware (Xeon AMX")


@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 4), s=st.integers(1, 3), p=st.integers(0, 2), ceil=st.booleans(), include_pad=st.booleans(),
       size=st.integers(4, 10), zp=st.integers(0, 255), seed=st.integers(0, 2**31 - 1))
def test_avg_pool2d_is_qlinear_average_pool(k, s, p, ceil, include_pad, size, zp, seed):
    """DQ -> AveragePool -> Q (same qparams) is fused into QLinearAveragePool; ort_avg_pool2d
    equals it (padding, ceil_mode, count_include_pad)."""
    if 2 * p > k:  # ONNX and torch both refuse padding over half the kernel
        return
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (2, 3, size, size)).astype(np.uint8)
    scale = F32(rng.random() * 0.1 + 1e-3)
    nodes = [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["xd"]),
             helper.make_node("AveragePool", ["xd"], ["yd"], kernel_shape=[k, k], strides=[s, s], pads=[p] * 4,
                              ceil_mode=int(ceil), count_include_pad=int(include_pad)),
             helper.make_node("QuantizeLinear", ["yd", "s", "z"], ["y"])]
    m = model(nodes, [("x", TensorProto.UINT8)], [("y", TensorProto.UINT8)], {"s": scale, "z": np.uint8(zp)})
    (theirs,) = run(m, {"x": x})
    ours = qi.avg_pool2d(torch.from_numpy(x), float(scale), zp, k, s, p, ceil, include_pad, backend="ort")
    assert ours.shape == theirs.shape and int((ours.numpy() != theirs).sum()) == 0


def _quantize_graph():
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])]
    return lambda s, z: model(nodes, [("x", TensorProto.FLOAT)], [("y", TensorProto.UINT8)],
                              {"s": F32(s), "z": np.uint8(z)})


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), zp=st.integers(0, 255))
def test_quantize_divides_like_onnxruntime(seed, zp):
    rng = np.random.default_rng(seed)
    s = F32(rng.random() * 0.1 + 1e-4)
    ties = (np.arange(-300, 300) + 0.5).astype(F32) * s  # values near x.5 steps: where division matters
    x = np.concatenate([ties, np.nextafter(ties, F32(np.inf)), (rng.standard_normal(500) * 200 * s).astype(F32)])
    (y,) = run(_quantize_graph()(s, zp), {"x": x})
    assert int((ort_quantize(torch.from_numpy(x), float(s), zp).numpy() != y).sum()) == 0


def test_quantize_division_differs_from_torch():
    """The one-ulp difference between x / s and x * f32(1/s) moves near-ties: measured, not assumed."""
    s, zp = F32(0.1), 3
    x = (np.arange(-1000, 1000) + 0.5).astype(F32) * s
    (y,) = run(_quantize_graph()(s, zp), {"x": x})
    torch_codes = quantize(torch.from_numpy(x), float(s), zp, "quint8").numpy()
    assert int((torch_codes != y).sum()) > 0
    assert int((ort_quantize(torch.from_numpy(x), float(s), zp).numpy() != y).sum()) == 0


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31), relu=st.booleans())
def test_add_matches_qlinearadd_on_every_pair(tmp_path_factory, seed, relu):
    rng = np.random.default_rng(seed)
    sa, sb, so = (F32(rng.random() * 0.1 + 1e-3) for _ in range(3))
    za, zb = (int(v) for v in rng.integers(0, 256, 2))
    zo = 0 if relu else int(rng.integers(0, 256))
    codes = np.arange(256, dtype=np.uint8)
    a, b = np.repeat(codes, 256).reshape(1, 256, 16, 16), np.tile(codes, 256).reshape(1, 256, 16, 16)
    inits = {"sa": sa, "za": np.uint8(za), "sb": sb, "zb": np.uint8(zb), "so": so, "zo": np.uint8(zo)}
    nodes = [helper.make_node("DequantizeLinear", ["a", "sa", "za"], ["ad"]),
             helper.make_node("DequantizeLinear", ["b", "sb", "zb"], ["bd"]),
             helper.make_node("Add", ["ad", "bd"], ["c"])]
    last = "c"
    if relu:
        nodes.append(helper.make_node("Relu", ["c"], ["r"]))
        last = "r"
    nodes.append(helper.make_node("QuantizeLinear", [last, "so", "zo"], ["y"]))
    m = model(nodes, [("a", TensorProto.UINT8), ("b", TensorProto.UINT8)], [("y", TensorProto.UINT8)], inits)
    path = str(tmp_path_factory.mktemp("a") / "opt.onnx")
    (y,) = run(m, {"a": a, "b": b}, optimized=path)
    assert "QLinearAdd" in fused_ops(path)
    mine = qi.add(torch.from_numpy(a), float(sa), za, torch.from_numpy(b), float(sb), zb, float(so), zo,
                  relu=relu, backend="ort")
    assert int((mine.numpy() != y).sum()) == 0
    if not relu:  # the bare kernel, without the clamp a fused ReLU adds
        plain = ort_add(torch.from_numpy(a), float(sa), za, torch.from_numpy(b), float(sb), zb, float(so), zo)
        assert int((plain.numpy() != y).sum()) == 0


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31), hw=st.sampled_from([(1, 1), (2, 2), (4, 4), (7, 5), (8, 8)]),
       c=st.sampled_from([1, 8, 13, 128]))
def test_global_average_pool_matches(tmp_path_factory, seed, hw, c):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (2, c, *hw)).astype(np.uint8)
    s, z = F32(rng.random() * 0.1 + 1e-3), int(rng.integers(0, 256))
    nodes = [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["xd"]),
             helper.make_node("GlobalAveragePool", ["xd"], ["p"]),
             helper.make_node("QuantizeLinear", ["p", "s", "z"], ["y"])]
    m = model(nodes, [("x", TensorProto.UINT8)], [("y", TensorProto.UINT8)], {"s": s, "z": np.uint8(z)})
    path = str(tmp_path_factory.mktemp("p") / "opt.onnx")
    (y,) = run(m, {"x": x}, optimized=path)
    assert "QLinearGlobalAveragePool" in fused_ops(path)
    mine = qi.adaptive_avg_pool2d(torch.from_numpy(x), float(s), z, 1, backend="ort")
    assert int((mine.numpy() != y).sum()) == 0
    assert int((ort_global_avg_pool(torch.from_numpy(x), float(s), z, float(s), z).numpy() != y).sum()) == 0


def test_bias_scale_far_from_product_leaves_a_float_conv(tmp_path):
    """A bias DQ at 2 x (x_scale * w_scale) is not fused: the float Conv stays (why to_onnx
    writes the bias at exactly f32(x_scale * w_scale))."""
    w = np.ones((8, 8, 1, 1), np.int8)
    paths = {}
    for mult in (1.0, 2.0):
        m = qdq_layer("conv", w, np.full(8, 0.01, F32), np.zeros(8, np.int8), np.arange(8, dtype=np.int32),
                      np.full(8, F32(0.02) * F32(0.01) * F32(mult), F32), 0.02, 0, 0.1, 0)
        paths[mult] = str(tmp_path / f"{mult}.onnx")
        run(m, {"x": np.zeros((1, 8, 2, 2), np.uint8)}, optimized=paths[mult])
    assert "QLinearConv" in fused_ops(paths[1.0]) and "Conv" not in fused_ops(paths[1.0])
    assert "Conv" in fused_ops(paths[2.0]) and "QLinearConv" not in fused_ops(paths[2.0])


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31), hi=st.sampled_from([6.0, 1.0, 0.37]))
def test_relu6_clip_stays_float_and_matches(tmp_path_factory, seed, hi):
    """DQ -> Clip(0, hi) -> Q with a zero point above 0: onnxruntime cannot drop the Clip (Q's
    range reaches below 0), runs it in float, and the ort flavour's clamp computes the same."""
    rng = np.random.default_rng(seed)
    x = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    s, z = F32(rng.random() * 0.1 + 1e-3), int(rng.integers(1, 256))
    inits = {"s": s, "z": np.uint8(z), "lo": F32(0.0), "hi": F32(hi)}
    nodes = [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["xd"]),
             helper.make_node("Clip", ["xd", "lo", "hi"], ["c"]),
             helper.make_node("QuantizeLinear", ["c", "s", "z"], ["y"])]
    m = model(nodes, [("x", TensorProto.UINT8)], [("y", TensorProto.UINT8)], inits)
    path = str(tmp_path_factory.mktemp("clip") / "opt.onnx")
    (y,) = run(m, {"x": x}, optimized=path)
    assert "Clip" in fused_ops(path)
    mine = ort_clip(torch.from_numpy(x), float(s), z, 0.0, hi)
    assert int((mine.numpy() != y).sum()) == 0
