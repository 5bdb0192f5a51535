"""Recipes with fp32 layers: the exported file run in onnxruntime against qcal's ort flavour.

Per zoo model two recipes on fbgemm_default: one fp32 layer in the middle (between a
DequantizeLinear and a QuantizeLinear: onnxruntime quantizes it itself, and qcal predicts
it exactly) and the first and last layers in fp32 (the model's input and output are float:
onnxruntime keeps them float and runs MLAS's float kernels: SGEMM and the NCHWc Conv,
which qcal reproduces for these shapes, so exactness is asserted; a float Conv qcal does
not reproduce would only get a small bound, its near-ties counted and printed).
onnxruntime's optimized graph keeps float Conv/Gemm exactly where qcal says it runs them
in float.
"""

from __future__ import annotations

from collections import Counter

import onnx
import onnxruntime as ort
import pytest

import qcal
from qcal import zoo
from qcal.int8.backends.ort_fp32 import ort_fp32_layers
from qcal.recipes import Recipe
from qcal.zoo.datasets import calib_batches, digits_splits

pytestmark = pytest.mark.usefixtures("one_thread")
ort.set_default_logger_severity(3)
BASE = "fbgemm_default"
RECIPES = {  # model -> (a layer between two int8 layers, [first layer, last layer])
    "digits_cnn": ("conv_3x3_64", ["conv_3x3_32a", "fc2"]),
    "digits_mobilenet": ("blocks.1.pointwise.0", ["stem.0", "fc"]),
    "digits_resnet": ("block1.conv2", ["stem.0", "fc"]),
    "digits_mlp": ("fc2", ["fc1", "fc3"]),
}
FLOAT_OPS = {"Conv", "Gemm", "MatMul"}


@pytest.fixture(scope="module")
def splits():
    return digits_splits()


@pytest.fixture(scope="module", params=list(RECIPES))
def calibrated(request, splits):
    """{"middle" | "ends": QuantizedModel on the ort flavour} for one zoo model."""
    middle, ends = RECIPES[request.param]
    recipes = {"middle": Recipe(BASE, {middle: None}, name="middle"),
               "ends": Recipe(BASE, dict.fromkeys(ends), name="ends")}
    qms = qcal.calibrate_many(zoo.load(request.param), calib_batches(splits.calib[0]), list(recipes.values()), ["ort"])
    return request.param, {key: qms[(r.name, "ort")] for key, r in recipes.items()}


def _float_ops(path) -> Counter:
    """Float Conv/Gemm/MatMul nodes of an optimized graph (fused activations count as theirs)."""
    ops = (n.op_type.removeprefix("Fused") for n in onnx.load(path).graph.node)
    return Counter(op for op in ops if op in FLOAT_OPS)


def _check(name, qm, x, tmp_path):
    path = qcal.to_onnx(qm, tmp_path / "recipe.onnx", input_shape=(1, 8, 8))
    onnx.checker.check_model(onnx.load(path), full_check=True)
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    (theirs,) = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
    differing = int((qm(x).numpy() != theirs).sum())
    kinds = ort_fp32_layers(qm.graph)
    print(f"{name} {qm.recipe.to_data()['layers']}: {differing} differing values of {theirs.size}; "
          f"onnxruntime runs the fp32 layers as {kinds}")
    expected = Counter(kind.split()[1] for kind in kinds.values() if kind != "int8")
    assert _float_ops(tmp_path / "optimized.onnx") == expected  # nowhere else a float Conv/Gemm
    if any(kind.endswith("(not reproduced)") for kind in kinds.values()):
        assert differing <= max(4, theirs.size // 200), "more than near-ties after onnxruntime's float Conv"
    else:
        assert differing == 0


@pytest.mark.parametrize("which", ["middle", "ends"])
def test_recipe_file_matches_ort_flavour(calibrated, which, splits, tmp_path):
    name, qms = calibrated
    _check(name, qms[which], splits.test[0][:64], tmp_path)


def test_middle_fp32_layer_is_quantized_by_onnxruntime(calibrated):
    """The fp32 layer between two int8 layers runs int8 in onnxruntime (what qcal predicts and
    notes), the first and last layers float."""
    name, qms = calibrated
    middle = RECIPES[name][0]
    assert ort_fp32_layers(qms["middle"].graph) == {middle: "int8"}
    assert all(kind.startswith("float") for kind in ort_fp32_layers(qms["ends"].graph).values())
    assert any("quantizes the fp32 layers" in note for note in qms["middle"].notes)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["middle", "ends"])
def test_recipe_file_matches_on_whole_test_split(calibrated, which, splits, tmp_path):
    name, qms = calibrated
    _check(name, qms[which], splits.test[0], tmp_path)
