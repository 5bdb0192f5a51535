"""backend="onnx" against onnx's own reference evaluator (``onnx.reference.ReferenceEvaluator``).

The oracle is the pinned ``onnx`` package running single nodes: QuantizeLinear,
DequantizeLinear, QLinearConv and QLinearMatMul, on >= 200 random cases per op, with scales
that put values exactly on .5 (ties) in about half of them. Every output value must equal
qcal's: 0 differing values.

onnx 1.23's reference follows the operator definitions everywhere these cases reach, with one
departure, shown by its own test and excluded (counted) from the QuantizeLinear sweep: when
``x / y_scale`` does not fit int32, the reference casts it to int32 before clipping (numpy
gives INT32_MIN), so 3e9 quantizes to 0 (uint8) or -128 (int8) instead of saturating to
255 / 127 as the spec's ``saturate`` says; qcal saturates. The per-channel QLinearConv scale,
which an older reference broadcast along the width axis, is now applied along the output
channel axis (axis 1 of NCHW), as the spec says: per-channel cases need no exclusion.

Every CPU compares the same thing. The reference's QLinearConv / QLinearMatMul accumulators
are numpy *integer* products (int32 ``@`` / ``np.matmul``: numpy hands only float and complex
matmuls to BLAS, so no OpenBLAS kernel choice, summation order or FMA reaches them) and its
requantization is elementwise float32/float64 arithmetic, correctly rounded at every SIMD
width: its answer is CPU-independent. Each sweep also checks it against an exact oracle
written here (accumulator in float64 / int64, exact far beyond these sums, then the spec's
formula) and prints both counts, so a CPU where either side drifts says which. qcal's side
*is* CPU-dependent: on AVX512-VNNI CPUs its accumulator for int8 weights is oneDNN's int8
convolution / matmul, elsewhere the float engine (``qcal/int8/common/accumulate.py``); so the conv
and matmul sweeps run a second time on the oneDNN engine on every CPU (forced, with weights
|w| <= 64 so that AVX2's oneDNN, which adds int16 pairs with saturation, is exact too).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx import helper
from onnx.reference import ReferenceEvaluator

import qcal.int8 as qi
import qcal.int8.common.accumulate as accumulate
from qcal.int8 import pack_cache
from qcal.int8.native.route import NativeRoute

CASES = 240  # random cases per op (the issue asks for >= 200)
_TORCH_DTYPES = {np.uint8: torch.uint8, np.int8: torch.int8}
_NAMES = {np.uint8: "quint8", np.int8: "qint8"}


def reference(op: str, inputs: dict[str, np.ndarray], **attrs) -> np.ndarray:
    """One ONNX node run by onnx's reference evaluator (inputs in the op's order)."""
    node = helper.make_node(op, list(inputs), ["y"], **attrs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the int32 cast overflow, see above
        return ReferenceEvaluator(node).run(None, inputs)[0]


def _dtype(rng) -> type:
    return (np.uint8, np.int8)[int(rng.integers(2))]


def _codes(rng, dtype, shape) -> np.ndarray:
    info = np.iinfo(dtype)
    return rng.integers(info.min, int(info.max) + 1, shape).astype(dtype)


def _scales(rng, n: int, ties: bool, lo: int = 2, hi: int = 9) -> np.ndarray:
    if ties:  # powers of two: products and quotients land exactly on .5
        return (2.0 ** -rng.integers(lo, hi, n)).astype(np.float32)
    return (rng.random(n) * 0.05 + 0.001).astype(np.float32)


def _per_axis(rng, values: np.ndarray, per_axis: bool) -> np.ndarray:
    return values if per_axis else values[:1].reshape(())


def quantize_case(rng):
    shape = tuple(int(d) for d in rng.integers(1, 6, int(rng.integers(1, 5))))
    axis = int(rng.integers(len(shape)))
    per_axis, ties, dtype = rng.random() < 0.5, rng.random() < 0.5, _dtype(rng)
    n = shape[axis] if per_axis else 1
    scale = _per_axis(rng, _scales(rng, n, ties, -2, 6), per_axis)
    zp = _per_axis(rng, _codes(rng, dtype, n), per_axis)
    bshape = [1] * len(shape)
    bshape[axis] = -1
    s = scale.reshape(bshape) if per_axis else scale
    if ties:  # half-integer multiples of the scale: exact ties for rint
        x = ((rng.integers(-300, 300, shape) + 0.5) * s).astype(np.float32)
    else:
        x = (rng.standard_normal(shape) * 200 * s).astype(np.float32)
    if rng.random() < 0.1:  # values whose x / scale overflows int32: the reference's departure
        x.flat[0] = np.float32(rng.choice([-1, 1]) * 3e9) * s.flat[0]
    return x, scale, zp, axis


def test_quantize_linear_matches_the_reference():
    rng = np.random.default_rng(0)
    differing = excluded = ties = values = 0
    for _ in range(CASES):
        x, scale, zp, axis = quantize_case(rng)
        ref = reference("QuantizeLinear", {"x": x, "y_scale": scale, "y_zero_point": zp}, axis=axis)
        out = qi.quantize(torch.from_numpy(x), torch.from_numpy(scale), torch.from_numpy(zp.astype(np.int64)),
                          _NAMES[zp.dtype.type], axis=axis if scale.ndim else None, backend="onnx").numpy()
        s = scale.reshape([-1 if d == axis else 1 for d in range(x.ndim)]) if scale.ndim else scale
        q = x / s
        beyond = np.abs(np.rint(q)) >= 2.0**31  # departure: excluded, and shown below
        excluded += int(beyond.sum())
        differing += int((out != ref)[~beyond].sum())
        ties += int((np.abs(q - np.trunc(q)) == 0.5).sum())
        values += x.size
    print(f"QuantizeLinear: {CASES} cases, {values} values, {ties} exact ties, "
          f"{differing} differing, {excluded} excluded (int32 overflow in the reference)")
    assert differing == 0
    assert ties > 1000 and excluded > 0


def test_quantize_linear_reference_departs_from_the_spec_beyond_int32():
    # spec: y = saturate(round(x / y_scale) + y_zero_point); 3e9 / 1 saturates to the maximum
    x = np.array([3e9, -3e9, 2.5, 1e6], dtype=np.float32)
    for dtype, expected in ((np.uint8, [255, 0, 5, 255]), (np.int8, [127, -128, 5, 127])):
        zp = np.array(3, dtype=dtype)
        ref = reference("QuantizeLinear", {"x": x, "y_scale": np.array(1.0, np.float32), "y_zero_point": zp})
        assert ref[0] == np.iinfo(dtype).min  # the reference: int32 cast overflow, then clip
        out = qi.quantize(torch.from_numpy(x), 1.0, 3, _NAMES[dtype], backend="onnx")
        assert out.tolist() == expected  # qcal: the spec's saturation
        assert ref[1:].tolist() == expected[1:]  # they agree everywhere else


def test_dequantize_linear_matches_the_reference():
    rng = np.random.default_rng(1)
    differing = values = 0
    for _ in range(CASES):
        shape = tuple(int(d) for d in rng.integers(1, 6, int(rng.integers(1, 5))))
        axis, per_axis, dtype = int(rng.integers(len(shape))), rng.random() < 0.5, _dtype(rng)
        n = shape[axis] if per_axis else 1
        scale = _per_axis(rng, _scales(rng, n, rng.random() < 0.5, -8, 20), per_axis)
        zp = _per_axis(rng, _codes(rng, dtype, n), per_axis)
        x = _codes(rng, dtype, shape)
        ref = reference("DequantizeLinear", {"x": x, "x_scale": scale, "x_zero_point": zp}, axis=axis)
        out = qi.dequantize(torch.from_numpy(x), torch.from_numpy(scale), torch.from_numpy(zp.astype(np.int64)),
                            axis=axis if per_axis else None).numpy()
        assert out.dtype == ref.dtype == np.float32
        differing += int((out.view(np.uint32) != ref.view(np.uint32)).sum())  # bit for bit
        values += x.size
    print(f"DequantizeLinear: {CASES} cases, {values} values, {differing} differing")
    assert differing == 0


def conv_case(rng):
    groups = int(rng.choice([1, 1, 2, 3]))
    depthwise = rng.random() < 0.2
    cg = 1 if depthwise else int(rng.integers(1, 5))
    c, o = cg * groups, groups * int(rng.integers(1, 4))
    if depthwise:
        groups = c = int(rng.integers(2, 9))
        o = c * int(rng.integers(1, 3))
    k = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    stride, dil = tuple(int(v) for v in rng.integers(1, 3, 2)), tuple(int(v) for v in rng.integers(1, 3, 2))
    pad = tuple(int(v) for v in rng.integers(0, 3, 2))
    h = int(rng.integers(dil[0] * (k[0] - 1) + 1, 9))
    w = int(rng.integers(dil[1] * (k[1] - 1) + 1, 9))
    x_dtype, w_dtype, y_dtype = _dtype(rng), _dtype(rng), _dtype(rng)
    ties, per_channel = rng.random() < 0.5, rng.random() < 0.5
    inputs = {
        "x": _codes(rng, x_dtype, (int(rng.integers(1, 3)), c, h, w)),
        "x_scale": _scales(rng, 1, ties)[0].reshape(()),
        "x_zero_point": _codes(rng, x_dtype, ()),
        "w": _codes(rng, w_dtype, (o, c // groups, *k)),
        "w_scale": _per_axis(rng, _scales(rng, o, ties), per_channel),
        "w_zero_point": _per_axis(rng, _codes(rng, w_dtype, o), per_channel),
        "y_scale": _scales(rng, 1, ties, -4, 3)[0].reshape(()),
        "y_zero_point": _codes(rng, y_dtype, ()),
    }
    if rng.random() < 0.6:
        inputs["B"] = rng.integers(-20000, 20000, o).astype(np.int32)
    attrs = {"group": groups, "strides": list(stride), "dilations": list(dil),
             "pads": [pad[0], pad[1], pad[0], pad[1]], "kernel_shape": list(k)}
    return inputs, attrs


def exact_requantize(acc: np.ndarray, multiplier: np.ndarray, y_zero_point: np.ndarray) -> tuple[np.ndarray, int]:
    """The spec's requantization, written as the reference writes it: ``acc * f32(f32(sa*sw)/so)``
    in float64, plus the zero point, clipped, rounded half to even; and how many values sit
    exactly on .5 (where a one-ulp change anywhere flips the result)."""
    r = acc.astype(np.float64) * multiplier.astype(np.float64) + float(y_zero_point)
    info = np.iinfo(y_zero_point.dtype)
    r = np.clip(r, info.min, info.max)
    return np.rint(r).astype(y_zero_point.dtype), int((np.abs(r - np.trunc(r)) == 0.5).sum())


def exact_qlinear_conv(inputs: dict, attrs: dict) -> tuple[np.ndarray, int]:
    """QLinearConv with an accumulator that is exact on every CPU: the centred integers in
    float64 (every partial sum is an integer far below 2^53, so any order, blocking or FMA
    gives it exactly), then ``exact_requantize``."""
    zw = np.asarray(inputs["w_zero_point"], np.float64).reshape(-1, 1, 1, 1)
    x = torch.from_numpy(inputs["x"].astype(np.float64) - float(inputs["x_zero_point"]))
    w = torch.from_numpy(inputs["w"].astype(np.float64) - zw)
    ph, pw = attrs["pads"][:2]
    x = F.pad(x, (pw, attrs["pads"][3], ph, attrs["pads"][2]))  # centred: padding is the zero point
    acc = F.conv2d(x, w, None, attrs["strides"], 0, attrs["dilations"], attrs["group"]).numpy()
    if "B" in inputs:
        acc = acc + inputs["B"].reshape(1, -1, 1, 1)
    ws = inputs["w_scale"].reshape(1, -1, 1, 1) if inputs["w_scale"].ndim else inputs["w_scale"]
    return exact_requantize(acc, inputs["x_scale"] * ws / inputs["y_scale"], inputs["y_zero_point"])


def qcal_conv(inputs: dict, attrs: dict) -> np.ndarray:
    t = {k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()}
    ws = t["w_scale"].double() if inputs["w_scale"].ndim else float(inputs["w_scale"])
    return qi.conv2d(
        t["x"], float(inputs["x_scale"]), int(inputs["x_zero_point"]), t["w"], ws,
        t["w_zero_point"].long(), t.get("B"), float(inputs["y_scale"]),
        torch.tensor(int(inputs["y_zero_point"]), dtype=_TORCH_DTYPES[inputs["y_zero_point"].dtype.type]),
        stride=tuple(attrs["strides"]), padding=tuple(attrs["pads"][:2]),
        dilation=tuple(attrs["dilations"]), groups=attrs["group"], backend="onnx",
    ).numpy()


def _halved(inputs: dict, weights: str) -> dict:
    """int8 weights and zero points halved (|w| <= 64): 2 * 255 * 64 <= 32767, so no int16 pair
    of oneDNN's AVX2 kernels can saturate and its accumulator is exact on any x86 CPU."""
    if inputs[weights].dtype != np.int8:
        return inputs
    zp = f"{weights}_zero_point"
    return dict(inputs, **{weights: inputs[weights] // 2, zp: np.asarray(inputs[zp] // 2).astype(np.int8)})


def conv_sweep(onednn: bool) -> dict[str, int]:
    rng = np.random.default_rng(2)
    n = {"values": 0, "differing": 0, "reference_vs_exact": 0, "ties": 0, "per_channel": 0}
    for _ in range(CASES):
        inputs, attrs = conv_case(rng)
        if onednn:
            inputs = _halved(inputs, "w")
        ref = reference("QLinearConv", inputs, **attrs)
        exact, ties = exact_qlinear_conv(inputs, attrs)
        out = qcal_conv(inputs, attrs)
        assert out.shape == ref.shape == exact.shape and out.dtype == ref.dtype == exact.dtype
        n["differing"] += int((out != exact).sum())
        n["reference_vs_exact"] += int((ref != exact).sum())
        n["ties"] += ties
        n["values"] += ref.size
        n["per_channel"] += inputs["w_scale"].ndim
    return n


def _report(op: str, n: dict[str, int]) -> None:
    print(f"{op}: {CASES} cases, {n}")
    assert n["reference_vs_exact"] == 0  # the reference is exact here: it compares what the spec says
    assert n["differing"] == 0
    assert n["ties"] > 10  # values exactly half-way (in range): a one-ulp error flips them


def test_qlinear_conv_matches_the_reference():
    n = conv_sweep(onednn=False)
    _report("QLinearConv", n)
    assert n["per_channel"] > CASES // 3


@pytest.fixture
def onednn_engine(monkeypatch):
    """qcal's accumulator on oneDNN's int8 kernels, as AVX512-VNNI CPUs run it, on any CPU
    (the native kernel, which would take the uint8 activations here, off); yields a counter
    of the layers that took it."""
    if not hasattr(torch.ops.onednn, "qconv2d_pointwise"):
        pytest.skip("this torch build has no oneDNN int8 ops")
    monkeypatch.setattr(accumulate, "onednn_exact", lambda: True)
    monkeypatch.setattr(NativeRoute, "native", lambda self: None)
    taken = {"layers": 0}
    real = accumulate.Accumulator._zero_point_corrected

    def counted(self, *args):
        found = real(self, *args)
        taken["layers"] += found is not None
        return found

    monkeypatch.setattr(accumulate.Accumulator, "_zero_point_corrected", counted)
    pack_cache.clear()  # no pack built for the other engine
    yield taken
    pack_cache.clear()


def test_qlinear_conv_on_the_onednn_engine_matches_the_reference(onednn_engine):
    n = conv_sweep(onednn=True)
    print(f"oneDNN engine: {onednn_engine['layers']} layers")
    _report("QLinearConv (oneDNN engine)", n)
    assert onednn_engine["layers"] > CASES // 3  # int8 weights: half the cases


def matmul_case(rng) -> tuple[dict, bool]:
    batch = tuple(int(d) for d in rng.integers(1, 4, int(rng.integers(0, 2))))
    m, k, n = (int(v) for v in rng.integers(1, 40, 3))
    a_dtype, b_dtype, y_dtype = _dtype(rng), _dtype(rng), _dtype(rng)
    ties, per_column = rng.random() < 0.5, rng.random() < 0.5
    inputs = {
        "a": _codes(rng, a_dtype, (*batch, m, k)),
        "a_scale": _scales(rng, 1, ties)[0].reshape(()),
        "a_zero_point": _codes(rng, a_dtype, ()),
        "b": _codes(rng, b_dtype, (k, n)),
        "b_scale": _per_axis(rng, _scales(rng, n, ties), per_column),
        "b_zero_point": _per_axis(rng, _codes(rng, b_dtype, n), per_column),
        "y_scale": _scales(rng, 1, ties, -4, 3)[0].reshape(()),
        "y_zero_point": _codes(rng, y_dtype, ()),
    }
    return inputs, per_column


def exact_qlinear_matmul(inputs: dict) -> tuple[np.ndarray, int]:
    """QLinearMatMul with an int64 accumulator (numpy integer matmul: no BLAS, exact)."""
    a = inputs["a"].astype(np.int64) - int(inputs["a_zero_point"])
    b = inputs["b"].astype(np.int64) - np.asarray(inputs["b_zero_point"], np.int64)
    m = inputs["a_scale"] * inputs["b_scale"] / inputs["y_scale"]
    return exact_requantize(np.matmul(a, b), m, inputs["y_zero_point"])


def qcal_matmul(inputs: dict, per_column: bool) -> np.ndarray:
    bs = torch.from_numpy(inputs["b_scale"]).double() if per_column else float(inputs["b_scale"])
    zy = inputs["y_zero_point"]
    return qi.linear(
        torch.from_numpy(inputs["a"]), float(inputs["a_scale"]), int(inputs["a_zero_point"]),
        torch.from_numpy(np.ascontiguousarray(inputs["b"].T)), bs,
        torch.from_numpy(np.asarray(inputs["b_zero_point"]).astype(np.int64)), None,
        float(inputs["y_scale"]), torch.tensor(int(zy), dtype=_TORCH_DTYPES[zy.dtype.type]), backend="onnx",
    ).numpy()


def matmul_sweep(onednn: bool) -> dict[str, int]:
    rng = np.random.default_rng(3)
    n = {"values": 0, "differing": 0, "reference_vs_exact": 0, "ties": 0}
    for _ in range(CASES):
        inputs, per_column = matmul_case(rng)
        if onednn:
            inputs = _halved(inputs, "b")
        ref = reference("QLinearMatMul", inputs)
        exact, ties = exact_qlinear_matmul(inputs)
        out = qcal_matmul(inputs, per_column)
        assert out.shape == ref.shape == exact.shape and out.dtype == ref.dtype == exact.dtype
        n["differing"] += int((out != exact).sum())
        n["reference_vs_exact"] += int((ref != exact).sum())
        n["ties"] += ties
        n["values"] += ref.size
    return n


def test_qlinear_matmul_matches_the_reference():
    _report("QLinearMatMul", matmul_sweep(onednn=False))


def test_qlinear_matmul_on_the_onednn_engine_matches_the_reference(onednn_engine):
    n = matmul_sweep(onednn=True)
    print(f"oneDNN engine: {onednn_engine['layers']} layers")
    _report("QLinearMatMul (oneDNN engine)", n)
    assert onednn_engine["layers"] > CASES // 3  # int8 weights: half the cases


def test_hand_checked_ties_round_after_adding_the_zero_point():
    # acc 20 * 0.125 = 2.5; + zp 3 = 5.5 -> 6 (uint8); acc -20 with zp -1: -3.5 -> -4 (int8)
    x = torch.tensor([[20, -20]], dtype=torch.int8)
    w = torch.tensor([[1, 0], [0, 1]], dtype=torch.int8)
    u = qi.linear(x, 0.5, 0, w, 0.25, 0, None, 1.0, torch.tensor(3, dtype=torch.uint8), backend="onnx")
    s = qi.linear(x, 0.5, 0, w, 0.25, 0, None, 1.0, torch.tensor(-1, dtype=torch.int8), backend="onnx")
    assert u.tolist() == [[6, 0]]  # -2.5 + 3 = 0.5 -> rint 0
    assert s.tolist() == [[2, -4]]  # 2.5 - 1 = 1.5 -> 2


@pytest.mark.parametrize("dtype", ["quint8", "qint8"])
def test_onnx_quantize_divides_where_torch_multiplies_by_the_reciprocal(dtype):
    x = torch.tensor([np.float32(12.750001)])
    assert qi.quantize(x, 0.3, 0, dtype).tolist() == [43]  # torch: x * f32(1/0.3) = 42.500004
    assert qi.quantize(x, 0.3, 0, dtype, backend="onnx").tolist() == [42]  # x / 0.3 = 42.5 -> even
    ref = reference("QuantizeLinear", {"x": x.numpy(), "y_scale": np.array(0.3, np.float32),
                                       "y_zero_point": np.array(0, np.uint8 if dtype == "quint8" else np.int8)})
    assert ref.tolist() == [42]
