"""Recipes against torch: prepare_fx -> calibrate -> convert_fx with to_qconfig_mapping gives
the outputs of qcal.calibrate(model, data, recipe, backend), value for value; and one test per
boundary rule torch applies (checked on torch itself, then on qcal)."""

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.ao.quantization import QConfigMapping
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

import qcal
import qcal.graph.program
from qcal import datasets, zoo
from qcal.analysis.reference import quantized_engine, torch_reference
from qcal.export.qconfig import qconfig_mapping_code, to_qconfig_mapping
from qcal.recipes import Recipe
from qcal.repair.apply import with_repairs
from qcal.schemes import SCHEMES, QSpec, Scheme

ENGINES = ["fbgemm", "qnnpack"]
# the layers a recipe keeps fp32 or gives per-channel weights, per graph-mode zoo model;
# "fan_out" is a layer whose output feeds two int8 ops (the residual models' stems)
ZOO = {
    "digits_cnn": {"fp32": ["conv_3x3_32a", "fc2"], "fan_out": "conv_3x3_64"},
    "digits_mobilenet": {"fp32": ["stem.0", "blocks.1.pointwise.0"], "fan_out": "blocks.0.pointwise.0"},
    "digits_resnet": {"fp32": ["block1.conv2", "fc"], "fan_out": "stem.0"},
    "digits_mlp": {"fp32": ["fc1", "fc3"], "fan_out": "fc2"},
}


def _recipes(layers: list[str], case: dict) -> dict[str, Recipe]:
    return {
        "fp32_layers": Recipe("per_tensor_affine", dict.fromkeys(case["fp32"])),
        "mixed_tensor_channel": Recipe("per_tensor_affine", dict.fromkeys(layers[::2], "per_channel_symmetric")),
        "fp32_fan_out_histogram": Recipe("fbgemm_default", {case["fan_out"]: None}),
        "only_one_int8": Recipe(None, {layers[len(layers) // 2]: "per_channel_affine"}),
    }


@pytest.fixture(scope="module")
def digits():
    s = datasets.digits_splits()
    return datasets.calib_batches(s.calib[0], 64, max_batches=2), s.test[0][:128]


def _torch_out(model, calib, recipe, backend, x):
    ref = torch_reference(model, calib, recipe, backend)
    with quantized_engine(backend):
        return ref(x)


@pytest.mark.parametrize("model_name", list(ZOO))
def test_zoo_recipes_match_torchs_convert_fx_on_both_engines(model_name, digits, one_thread):
    calib, x = digits
    model = zoo.load(model_name)
    layers = list(qcal.calibrate(model, calib, "per_tensor_affine").quant_layers)
    counts = {}
    for name, recipe in _recipes(layers, ZOO[model_name]).items():
        models = qcal.calibrate_many(model, calib, [recipe], ENGINES)
        for backend in ENGINES:
            qm = models[(recipe.name, backend)]
            assert qm.mode == "graph"
            counts[(name, backend)] = int((qm(x) != _torch_out(model, calib, recipe, backend, x)).sum())
    print(model_name, counts)
    assert counts == dict.fromkeys(counts, 0)


# -- the boundary rules, on a small model with every boundary: c0 feeds c1 and c2 ----------
class Fork(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c0 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.c1 = nn.Conv2d(8, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        y = self.relu(self.bn(self.c0(x)))
        z = self.pool(self.c1(y)) + self.pool(self.c2(y))
        return self.fc(torch.flatten(z, 1))


def _fork():
    torch.manual_seed(1)
    model = Fork().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    calib = [torch.randn(8, 3, 8, 8) * (1 + i) for i in range(3)]
    return model, calib, torch.randn(16, 3, 8, 8) * 2


def _act(dtype="quint8", observer="minmax", reduce_range=True):
    return QSpec(dtype, "per_tensor_affine", observer, reduce_range=reduce_range)


def _scheme(name, **act):
    return Scheme(name, SCHEMES["per_tensor_affine"].weight, _act(**act))


def _prepared(model, recipe, calib, backend="fbgemm"):
    with quantized_engine(backend):
        p = prepare_fx(copy.deepcopy(model), to_qconfig_mapping(recipe, backend), example_inputs=(calib[0],))
        for b in calib:
            p(b)
    return p


def _assert_parity(model, calib, x, recipe, backend="fbgemm"):
    qm = qcal.calibrate(model, calib, recipe, backend)
    assert int((qm(x) != _torch_out(model, calib, recipe, backend, x)).sum()) == 0
    return qm


def test_rule_a_int8_consumer_keeps_its_producers_observer():
    model, calib, x = _fork()
    recipe = Recipe("per_tensor_affine", {"c1": _scheme("full_range", reduce_range=False)})
    ref = torch_reference(model, calib, recipe, "fbgemm")
    # torch: no quantize step between c0 and c1, whatever c1's activation spec says
    assert "quantize_per_tensor" not in [str(n.target) for n in ref.graph.nodes if n.args and
                                          getattr(n.args[0], "target", None) == "c0"]
    qm = _assert_parity(model, calib, x, recipe)
    layers = qm.quant_layers
    assert (layers["c1"].input_scale, layers["c1"].input_zero_point) == (
        layers["c0"].output_scale, layers["c0"].output_zero_point)
    assert layers["c1"].output_zero_point > 127 or layers["c1"].output_scale < layers["c2"].output_scale


@pytest.mark.parametrize("observer", ["minmax", "histogram"])
def test_rule_b_fp32_value_feeding_two_int8_layers_reuses_the_first_observer_of_its_class(observer):
    model, calib, x = _fork()
    recipe = Recipe("per_tensor_affine", {"c0": None, "c2": _scheme("other", observer=observer, reduce_range=False)})
    prepared = _prepared(model, recipe, calib)
    observers = [n for n in prepared.graph.nodes if n.op == "call_module" and "activation_post_process" in n.target]
    on_y = [n for n in observers if n.args[0].target == "c0"]
    assert len(on_y) == (1 if observer == "minmax" else 2)  # torch: same class and dtype -> shared
    qm = _assert_parity(model, calib, x, recipe)
    c1, c2 = qm.quant_layers["c1"], qm.quant_layers["c2"]
    shared = (c1.input_scale, c1.input_zero_point) == (c2.input_scale, c2.input_zero_point)
    assert shared == (observer == "minmax")  # c2's reduce_range=False is ignored when shared


def test_rule_c_none_keeps_only_that_module_fp32_the_pool_after_it_runs_int8():
    model, calib, x = _fork()
    recipe = Recipe("per_tensor_affine", {"c1": None})
    converted = torch_reference(model, calib, recipe, "fbgemm")
    names = [n.name for n in converted.graph.nodes]
    assert "pool_input_scale_0" in names  # torch quantizes the pool's input with a fresh observer
    qm = _assert_parity(model, calib, x, recipe)
    kinds = {s.name: s.kind for s in qm.graph.steps}
    assert kinds["c1"] == "float" and kinds["pool"] == "max_pool2d" and kinds["c1_quantized"] == "quantize"


def test_rule_d_names_follow_modules_bn_and_relu_names_are_refused():
    model, calib, x = _fork()
    torch_plain = _torch_out(model, calib, "per_tensor_affine", "fbgemm", x)
    for ignored in ("bn", "relu"):  # torch silently ignores a name fused away
        assert torch.equal(torch_plain, _torch_out(model, calib, Recipe("per_tensor_affine", {ignored: None}),
                                                   "fbgemm", x))
        with pytest.raises(ValueError, match=rf"names \['{ignored}'\].*valid layer names: c0, c1, c2, fc"):
            qcal.calibrate(model, calib, Recipe("per_tensor_affine", {ignored: None}))
    # the fused conv-bn-relu takes the conv's name: c0 fp32 keeps BN and ReLU with it
    qm = _assert_parity(model, calib, x, Recipe("per_tensor_affine", {"c0": None}))
    step = next(s for s in qm.graph.steps if s.name == "c0")
    assert step.kind == "float" and step.relu


def _fp32_layer_output(qm, x, name):
    values = {}
    qm.runtime().run(x, values)
    return values["__values__"][name]


def test_rule_e_fp32_layers_get_channels_last_dequantized_inputs(monkeypatch):
    model, calib, x = _fork()
    recipe = Recipe("per_tensor_affine", {"c1": None})
    converted = torch_reference(model, calib, recipe, "fbgemm")
    seen = {}
    converted.c1.register_forward_hook(lambda m, a, out: seen.update(
        channels_last=a[0].is_contiguous(memory_format=torch.channels_last), out=out))
    with quantized_engine("fbgemm"):
        converted(x)
    assert seen["channels_last"]
    qm = _assert_parity(model, calib, x, recipe)
    assert torch.equal(_fp32_layer_output(qm, x, "c1"), seen["out"])
    # qcal hands c1 the same channels_last input: what its float conv sees is torch's layout,
    # whether or not this CPU's float kernels round a contiguous input differently
    formats = []
    original = qcal.graph.program.torch_memory_format

    def spy(value, channels_last):
        out = original(value, channels_last)
        formats.append((tuple(out.shape), out.is_contiguous(memory_format=torch.channels_last)))
        return out

    monkeypatch.setattr(qcal.graph.program, "torch_memory_format", spy)
    _fp32_layer_output(qm, x, "c1")
    c1_input = [channels_last for shape, channels_last in formats if len(shape) == 4 and shape[1] == converted.c1.in_channels]
    assert c1_input and all(c1_input)


def test_rule_f_one_pass_serves_every_scheme_and_recipe_with_order_dependent_observers():
    model, calib, x = _fork()
    moving = _scheme("moving", observer="moving_average")
    recipes = [Recipe("fbgemm_default", {"c1": None, "c2": moving}, name="r1"),
               Recipe(moving, {"c0": None}, name="r2"), Recipe(None, {"c2": "fbgemm_default"}, name="r3")]
    together = qcal.calibrate_many(model, calib, ["fbgemm_default", *recipes], ["fbgemm"])
    for recipe in recipes:
        alone = _assert_parity(model, calib, x, recipe)
        assert torch.equal(together[(recipe.name, "fbgemm")](x), alone(x))
    # the moving average depends on batch order: statistics cannot be merged after the fact
    reordered = qcal.calibrate(model, calib[::-1], recipes[1])
    assert not torch.equal(reordered(x), together[("r2", "fbgemm")](x))


def test_rule_g_the_engine_at_convert_time_decides_the_arithmetic():
    model, calib, x = _fork()
    recipe = Recipe("per_tensor_affine", {"c2": None})
    qm = {b: qcal.calibrate(model, calib, recipe, b) for b in ENGINES}
    for convert_engine in ENGINES:
        converted = torch_reference(model, calib, recipe, convert_engine)  # engine set before convert_fx
        for run_engine in ENGINES:
            with quantized_engine(run_engine):
                out = converted(x)
            assert int((out != qm[convert_engine](x)).sum()) == 0
    assert int((qm["fbgemm"](x) != qm["qnnpack"](x)).sum()) > 0  # so the engine choice matters


def test_to_qconfig_mapping_refuses_what_torch_cannot_run_naming_layer_and_setting():
    pct = Scheme("pct", QSpec("qint8", "per_tensor_symmetric", "percentile"), _act())
    with pytest.raises(ValueError, match=r"layer 'c1': scheme 'pct' uses the 'percentile' weight observer"):
        to_qconfig_mapping(Recipe("per_tensor_affine", {"c1": pct}))
    with pytest.raises(ValueError, match=r"default .*'s8' has qint8 activations"):
        to_qconfig_mapping(Scheme("s8", QSpec("qint8"), _act(dtype="qint8")))
    with pytest.raises(ValueError, match=r"layer 'fc': scheme 'u8' has quint8 weights"):
        to_qconfig_mapping(Recipe(None, {"fc": Scheme("u8", QSpec("quint8"), _act())}), "qnnpack")
    with pytest.raises(ValueError, match="no engine for backend 'onnx'"):
        to_qconfig_mapping("per_tensor_affine", "onnx")


@pytest.mark.parametrize("backend", ENGINES)
def test_generated_torch_only_code_builds_the_same_mapping(backend):
    model, calib, x = _fork()
    recipe = Recipe("fbgemm_default", {"c0": None, "c2": "per_channel_affine"})
    namespace = {}
    exec(qconfig_mapping_code(recipe, backend), namespace)
    with quantized_engine(backend):
        p = prepare_fx(copy.deepcopy(model), namespace["mapping"], example_inputs=(calib[0],))
        for b in calib:
            p(b)
        out = convert_fx(p)(x)
    assert int((out != qcal.calibrate(model, calib, recipe, backend)(x)).sum()) == 0


_XNN = {"quant_min": -127, "quant_max": 127}
_RANGED = {
    "xnnpack_weights": (QSpec("qint8", "per_channel_symmetric", "minmax", **_XNN),
                        QSpec("quint8", "per_tensor_affine", "minmax", quant_min=0, quant_max=127)),
    "tensor_symmetric_histogram": (QSpec("qint8", "per_tensor_symmetric", "minmax", **_XNN),
                                   QSpec("quint8", "per_tensor_affine", "histogram", True, quant_min=0, quant_max=200)),
    "int4_weights": (QSpec("qint8", "per_channel_affine", "moving_average", quant_min=-8, quant_max=7), _act()),
}


@pytest.mark.parametrize("case", list(_RANGED))
def test_quant_min_max_reach_torchs_observers_and_convert_fx_reproduces_qcal(case):
    """torch's observers get the range (reduce_range halving it there too), and the converted
    model holds qcal's qparams and codes and computes qcal's outputs."""
    weight, act = _RANGED[case]
    model, calib, x = _fork()
    scheme = Scheme(case, weight, act)
    qconfig = to_qconfig_mapping(scheme, "fbgemm").global_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's reduce_range deprecation
        assert (qconfig.weight().quant_min, qconfig.weight().quant_max) == weight.code_range()
        assert (qconfig.activation().quant_min, qconfig.activation().quant_max) == act.code_range()
    qm = _assert_parity(model, calib, x, scheme)
    with quantized_engine("fbgemm"):
        converted = convert_fx(_prepared(model, scheme, calib))
    for name, layer in qm.quant_layers.items():
        mod = converted.get_submodule(name)
        wq = mod.weight()
        scales = wq.q_per_channel_scales() if weight.per_channel else torch.tensor([wq.q_scale()])
        assert torch.equal(scales.float(), layer.weight_scale) and torch.equal(wq.int_repr(), layer.weight_q)
        assert (mod.scale, mod.zero_point) == (layer.output_scale, layer.output_zero_point)
    code = qconfig_mapping_code(scheme)
    assert f"quant_min={weight.quant_min}, quant_max={weight.quant_max}" in code


def test_a_recipe_with_adaround_is_refused_and_one_with_equalize_is_not():
    learned = with_repairs("per_tensor_symmetric", [("adaround", {"iterations": 10})])
    with pytest.raises(ValueError, match=r"AdaRound.*qcal\.to_onnx"):
        to_qconfig_mapping(learned, "fbgemm")
    equalized = with_repairs("per_tensor_symmetric", ["equalize"])
    assert isinstance(to_qconfig_mapping(equalized, "fbgemm"), QConfigMapping)  # the repair lives in the float model
    assert qconfig_mapping_code(equalized) == qconfig_mapping_code("per_tensor_symmetric")
