"""Single-op ONNX QDQ graphs built by hand, run in onnxruntime (CPU EP, default options).

A plain module beside conftest.py (tests/ is on sys.path through it), like wholemodel_cases.py.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcal.int8.cpu.mlas import ort_machine_dispatch

ort.set_default_logger_severity(3)
_FLOAT_KERNELS = {"FMA3": "AVX2 dispatch (FMA3 float kernels)",
                  "AVX512F": "AVX-512F dispatch (AVX512F float kernels, 16-channel NCHWc blocks)"}


def this_machines_dispatch():
    """This machine's MLAS dispatch, for a test comparing against its onnxruntime (the test
    unsets QCAL_ORT_CPU and QCAL_CPU itself); skips where qcal knows none (not Linux x86 with
    AVX2+FMA3)."""
    d = ort_machine_dispatch()
    if d is None:
        pytest.skip("needs a Linux x86 CPU with AVX2+FMA3 (MLAS's dispatch read from /proc/cpuinfo)")
    return d


def needs_float_kernels(dispatch, kernels: str) -> None:
    """Skip unless ``dispatch`` (this machine's) runs MLAS's ``kernels`` float kernels, naming both."""
    if dispatch.float_kernels != kernels:
        pytest.skip(f"needs MLAS {_FLOAT_KERNELS[kernels]}: this CPU dispatches {dispatch.float_kernels} "
                    f"({dispatch.name})")


def model(nodes, inputs, outputs, inits):
    """An opset-21 model: ``inputs``/``outputs`` are (name, elem_type) pairs; ``inits`` name -> array."""
    g = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info(n, t, None) for n, t in inputs],
        [helper.make_tensor_value_info(n, t, None) for n, t in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    return m


def run(m, feeds, optimized: str | None = None, options: dict[str, str] | None = None):
    """onnxruntime's outputs for ``feeds``; ``optimized`` saves the optimized graph there."""
    so = ort.SessionOptions()
    if optimized:
        so.optimized_model_filepath = optimized
    for k, v in (options or {}).items():
        so.add_session_config_entry(k, v)
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def qdq_layer(kind, w, w_scale, w_zp, bias_q, bias_scale, xs, xz, ys, yz, **attrs):
    """uint8 ``x`` -> DQ -> Conv/Gemm (weights and int32 bias through DQ) -> Q -> uint8 ``y``."""
    per_channel = np.ndim(w_scale) == 1
    axis = {"axis": 0} if per_channel else {}
    inits = {"xs": np.float32(xs), "xz": np.uint8(xz), "ys": np.float32(ys), "yz": np.uint8(yz), "w": w,
             "ws": np.asarray(w_scale, np.float32), "wz": np.asarray(w_zp, np.int8)}
    nodes = [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], **axis)]
    ins = ["xd", "wd"]
    if bias_q is not None:
        inits.update(b=bias_q, bs=np.asarray(bias_scale, np.float32), bz=np.zeros(len(bias_q), np.int32))
        nodes.append(helper.make_node("DequantizeLinear", ["b", "bs", "bz"], ["bd"], axis=0))
        ins.append("bd")
    op = "Conv" if kind == "conv" else "Gemm"
    nodes += [helper.make_node(op, ins, ["yf"], **attrs), helper.make_node("QuantizeLinear", ["yf", "ys", "yz"], ["y"])]
    return model(nodes, [("x", TensorProto.UINT8)], [("y", TensorProto.UINT8)], inits)


def fused_ops(path: str) -> list[str]:
    """Op types of an optimized model file."""
    import onnx

    return [n.op_type for n in onnx.load(path).graph.node]

