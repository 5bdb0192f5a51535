"""to_onnx + the "ort" flavour: the exported file run in onnxruntime equals qm.with_backend("ort").

Per zoo graph-mode model and preset, on held-out digits (a 64-image subset by default; the
whole test split under ``-m slow``): the final output of the unmodified file, every
quantized value of a separate debug export (extra outputs change onnxruntime's fusions, so
the shipped file is only ever judged by its own output), and onnxruntime's optimized graph
(no float Conv/Gemm/MatMul left where the scheme quantizes the layer).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import qcal
from qcal import zoo
from qcal.export.onnx import UnsupportedExport, build_model
from qcal.zoo.datasets import calib_batches, digits_splits

pytestmark = pytest.mark.usefixtures("one_thread")
MODELS = ["digits_cnn", "digits_mobilenet", "digits_resnet", "digits_mlp"]
SCHEMES = ["per_tensor_affine", "per_channel_symmetric", "fbgemm_default", "qnnpack_default"]
FLOAT_OPS = {"Conv", "Gemm", "MatMul"}
ort.set_default_logger_severity(3)


@pytest.fixture(scope="module")
def splits():
    return digits_splits()


@pytest.fixture(scope="module", params=MODELS)
def calibrated(request, splits):
    """{scheme: QuantizedModel on the ort flavour} for one zoo model (one calibration pass)."""
    qms = qcal.calibrate_many(zoo.load(request.param), calib_batches(splits.calib[0]), SCHEMES, ["ort"])
    return request.param, {scheme: qm for (scheme, _), qm in qms.items()}


def _session(path, optimized=None):
    so = ort.SessionOptions()
    if optimized:
        so.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _check_scheme(qm, x, tmp_path):
    path = qcal.to_onnx(qm, tmp_path / "model.onnx", input_shape=(1, 8, 8))
    onnx.checker.check_model(onnx.load(path), full_check=True)
    opt = tmp_path / "optimized.onnx"
    (y,) = _session(path, opt).run(None, {"input": x.numpy()})
    mine = qm(x).numpy()
    assert y.dtype == np.float32 and y.shape == mine.shape
    assert int((mine != y).sum()) == 0
    left = [n.op_type for n in onnx.load(opt).graph.node if n.op_type in FLOAT_OPS]
    assert left == [], f"onnxruntime kept float {left}: a layer the scheme quantizes runs in fp32"


@pytest.mark.parametrize("scheme", SCHEMES)
def test_exported_file_matches_ort_flavour(calibrated, scheme, splits, tmp_path):
    _, qms = calibrated
    _check_scheme(qms[scheme], splits.test[0][:64], tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("scheme", SCHEMES)
def test_exported_file_matches_on_whole_test_split(calibrated, scheme, splits, tmp_path):
    _, qms = calibrated
    _check_scheme(qms[scheme], splits.test[0], tmp_path)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_debug_export_layer_codes_match(calibrated, scheme, splits):
    _, qms = calibrated
    qm, x = qms[scheme], splits.test[0][:64]
    model = build_model(qm, (1, 8, 8), debug=True)
    outs = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()})
    results: dict = {}
    qm.runtime().run(x, results)
    values = results["__values__"]
    names = [o.name for o in model.graph.output][1:]
    assert len(names) >= len(qm.quant_layers)  # every layer's output codes are compared
    diffs = {n: int((values[n.removesuffix("_q")].numpy() != o).sum()) for n, o in zip(names, outs[1:], strict=True)}
    assert diffs == dict.fromkeys(names, 0)


def test_qnnpack_default_saturates_and_is_still_exact(calibrated, splits):
    """qnnpack_default's activations use the full 0..255 range: MLAS's U8S8 pairs saturate on
    this CPU without VNNI (counted here), and the ort flavour reproduces it (tests above)."""
    _, qms = calibrated
    traces = qms["qnnpack_default"].trace(splits.test[0][:64])
    pairs = sum(t.saturated_pairs for t in traces.values())
    print("saturated pairs (qnnpack_default):", pairs)
    if not qcal.int8.backends.ort.ort_saturates():
        assert pairs == 0


def test_file_layout(calibrated, tmp_path):
    _, qms = calibrated
    qm = qms["per_channel_symmetric"]
    model = onnx.load(qcal.to_onnx(qm, tmp_path / "m.onnx", input_shape=(1, 8, 8)))
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "input" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert out.name == "output" and out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    for name, layer in qm.quant_layers.items():
        assert inits[f"{name}.weight_q"].dtype == np.int8
        assert inits[f"{name}.weight_scale"].shape == (layer.weight_q.shape[0],)  # per channel
        if layer.bias is not None:
            assert inits[f"{name}.bias_q"].dtype == np.int32
            ats = np.float32(layer.input_scale) * layer.weight_scale.float().numpy()
            assert np.array_equal(inits[f"{name}.bias_scale"], ats)


def test_module_swap_models_are_refused(splits, tmp_path):
    model = zoo.load("digits_cnn")
    qm = qcal.calibrate(model, calib_batches(splits.calib[0]), "per_tensor_affine", "ort", mode="modules")
    with pytest.raises(UnsupportedExport, match="graph-mode models only"):
        qcal.to_onnx(qm, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_ort_flavour_differs_from_fbgemm(calibrated, splits):
    """The ort flavour is its own arithmetic, not fbgemm's renamed: the two disagree on some
    outputs (counts printed; the README quotes them), yet stay close."""
    name, qms = calibrated
    x = splits.test[0]
    counts = {s: int((qm(x) != qm.with_backend("fbgemm")(x)).sum()) for s, qm in qms.items()}
    print(name, "ort vs fbgemm differing outputs:", counts)
    assert sum(counts.values()) > 0
    qm = qms["per_channel_symmetric"]
    torch.testing.assert_close(qm(x), qm.with_backend("fbgemm")(x), atol=1.0, rtol=0.2)


@pytest.mark.parametrize("scheme", ["per_tensor_affine", "fbgemm_default"])
def test_default_call_leaves_the_input_shape_dynamic(scheme, splits, tmp_path):
    """``to_onnx(qm, path)`` without input_shape (it raised onnx's ValidationError: a graph
    input without a shape): every input dimension symbolic, the rank 4 the convs take; the
    file checks, runs at any batch size and equals the ort flavour."""
    qm = qcal.calibrate(zoo.load("digits_cnn"), calib_batches(splits.calib[0]), scheme, "ort")
    path = qcal.to_onnx(qm, tmp_path / "model.onnx")
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "dim_1", "dim_2", "dim_3"]
    assert not any(d.HasField("dim_value") for d in dims)
    session = _session(path)
    for x in (splits.test[0][:64], splits.test[0][64:71]):
        (y,) = session.run(None, {"input": x.numpy()})
        assert y.shape == (len(x), 10)
        assert int((qm(x).numpy() != y).sum()) == 0


def test_default_call_refuses_a_graph_of_several_input_ranks(splits, tmp_path):
    """digits_mlp flattens first, so its graph takes inputs of rank 2 and up: no rank to
    declare, and the message says to pass input_shape (which then works)."""
    qm = qcal.calibrate(zoo.load("digits_mlp"), calib_batches(splits.calib[0]), "per_tensor_affine", "ort")
    with pytest.raises(UnsupportedExport, match=r"rank 2, 3, 4, 5, 6.*pass input_shape="):
        qcal.to_onnx(qm, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    onnx.checker.check_model(onnx.load(qcal.to_onnx(qm, tmp_path / "m.onnx", input_shape=(1, 8, 8))))


@pytest.mark.parametrize(("weight", "bounds"), [
    (qcal.QSpec("qint8", "per_channel_symmetric", "minmax", quant_min=-127, quant_max=127), (-127, 127)),
    (qcal.QSpec("qint8", "per_channel_affine", "mse", quant_min=-8, quant_max=7), (-8, 7)),
])
def test_quant_min_max_schemes_export_exactly(weight, bounds, splits, tmp_path):
    """The weights' codes are already within the range (int8 initializers), activations'
    QuantizeLinear saturates to the dtype as the ort flavour does: 0 differing values."""
    act = qcal.QSpec("quint8", "per_tensor_affine", "minmax", quant_min=0, quant_max=200)
    qm = qcal.calibrate(zoo.load("digits_cnn"), calib_batches(splits.calib[0]), qcal.Scheme("r", weight, act), "ort")
    path = qcal.to_onnx(qm, tmp_path / "model.onnx")
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer}
    codes = np.concatenate([inits[f"{name}.weight_q"].ravel() for name in qm.quant_layers])
    assert bounds[0] <= codes.min() and codes.max() <= bounds[1]
    x = splits.test[0][:64]
    (y,) = _session(path).run(None, {"input": x.numpy()})
    assert int((qm(x).numpy() != y).sum()) == 0


class _IdentityShortcut(torch.nn.Module):
    """A residual block whose shortcut is an nn.Identity (torchvision's ResNets without a
    downsample, and the zoo's resnet18_like): the export passes its input through."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.body = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, padding=1))
        self.shortcut = torch.nn.Identity()
        self.head = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(256, 10))

    def forward(self, x):
        y = self.conv(x)
        return self.head(self.body(y) + self.shortcut(y))


def test_an_identity_module_exports_as_its_input(splits, tmp_path):
    qm = qcal.calibrate(_IdentityShortcut().eval(), calib_batches(splits.calib[0]), "fbgemm_default", "ort")
    assert any(s.kind == "shape" and s.target == "shortcut" for s in qm.graph.steps)
    _check_scheme(qm, splits.test[0][:64], tmp_path)
    assert not any(n.op_type in ("Identity", "Flatten") and "shortcut" in n.name
                   for n in build_model(qm, (1, 8, 8)).graph.node)
