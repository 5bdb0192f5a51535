"""build_graph: BN folding as torch fuses, and the observer plan torch's prepare_fx builds."""

import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization import get_default_qconfig_mapping
from torch.ao.quantization.observer import ObserverBase
from torch.ao.quantization.quantize_fx import prepare_fx
from torch.nn.utils.fusion import fuse_conv_bn_eval
from wholemodel_cases import ARCHITECTURES, make_model

from qcal.graph import layouts, program
from qcal.graph.ir import STEP_KINDS, UnsupportedGraph
from qcal.graph.program import run_float
from qcal.graph.trace import build_graph


def _torch_observer_instances(model, x):
    prepared = prepare_fx(model, get_default_qconfig_mapping("fbgemm"), example_inputs=(x,))
    return {id(m) for m in prepared.modules() if isinstance(m, ObserverBase)}


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_one_observation_point_per_observer_instance_of_torchs_prepared_model(arch):
    model = make_model(arch)
    x = torch.rand(2, 1, 8, 8)
    graph = build_graph(model)
    # (prepare_fx creates weight observers only at convert time)
    assert len(graph.obs_names) == len(_torch_observer_instances(model, x))


def test_observer_taps_follow_torch_call_order_for_shared_observers():
    # conv -> ReLU6 -> max pool: one observer sees the conv output, then the ReLU6 output,
    # then the pooled output (prepare_fx makes the three observer nodes share one instance)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU6(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 2)).eval()
    graph = build_graph(model)
    taps = []
    run_float(graph, torch.randn(2, 1, 8, 8), lambda obs, v: taps.append((obs, tuple(v.shape))))
    conv_obs = next(s.obs for s in graph.steps if s.kind == "conv")
    assert [shape for obs, shape in taps if obs == conv_obs] == [(2, 4, 6, 6), (2, 4, 6, 6), (2, 4, 3, 3)]


def test_conv_bn_relu_fold_into_one_step_with_torchs_folded_weights():
    model = make_model("resnet")
    graph = build_graph(model)
    stem = next(s for s in graph.steps if s.kind == "conv")
    assert stem.target == "stem.0" and stem.relu
    expected = fuse_conv_bn_eval(model.stem[0], model.stem[1])
    folded = graph.module.get_submodule("stem.0")
    assert torch.equal(folded.weight, expected.weight) and torch.equal(folded.bias, expected.bias)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in graph.module.modules())


def test_residual_add_followed_by_relu_becomes_one_add_relu_with_its_own_observer():
    graph = build_graph(make_model("resnet"))
    adds = [s for s in graph.steps if s.kind == "add"]
    assert len(adds) == 2 and all(s.relu for s in adds)
    obs_of = {s.name: s.obs for s in graph.steps}
    assert all(s.obs not in {obs_of[a.name] for a in s.args} for s in adds)
    assert len({s.obs for s in adds}) == 2


def test_nn_flatten_runs_in_fp32_between_a_dequantize_and_a_quantize_like_torch():
    graph = build_graph(make_model("cnn"))
    kinds = [s.kind for s in graph.steps]
    i = kinds.index("float")
    assert kinds[i - 1: i + 2] == ["dequantize", "float", "quantize"]


def test_the_folded_float_graph_computes_the_model():
    model = make_model("mobilenet")
    x = torch.rand(4, 1, 8, 8)
    out = run_float(build_graph(model), x)
    torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-5)


class Stack(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 2, 1), nn.Conv2d(1, 2, 1)

    def forward(self, x):
        return torch.stack([self.a(x), self.b(x)], 1)


class AddScalar(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x) + 1.0


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x) if x.shape[0] > 1 and bool(x.sum() > 0) else x


@pytest.mark.parametrize(("model", "reason"), [
    (Stack(), "stack"),
    (AddScalar(), "scalar"),
    (Branchy(), "cannot trace Branchy"),
    (nn.Sequential(nn.GELU()), "no nn.Conv2d or nn.Linear"),
    (nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), "LayerNorm"),
])
def test_ops_the_engine_does_not_mirror_are_named(model, reason):
    with pytest.raises(UnsupportedGraph, match=reason):
        build_graph(model.eval())


def test_functional_relu_after_linear_is_fused_but_torch_relu_is_not():
    class Fn(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.c(torch.relu(self.b(F.relu(self.a(x)))))

    graph = build_graph(Fn().eval())
    linears = {s.target: s for s in graph.steps if s.kind == "linear"}
    assert linears["a"].relu and not linears["b"].relu
    # torch.relu has no quantized pattern in torch's native config: it runs in fp32
    assert any(s.kind == "float" and s.target is torch.relu for s in graph.steps)
    assert operator.add not in {s.target for s in graph.steps}
    # qint8 activations (XNNPACK's; no torch engine takes them): torch.relu fused, as XNNPACKQuantizer does
    from qcal.graph.planner import plan
    from qcal.graph.trace import trace_folded
    from qcal.recipes import Recipe
    from qcal.schemes import SCHEMES

    xnn = plan(trace_folded(Fn().eval()), Recipe(SCHEMES["xnnpack_default"]))
    assert all(s.relu for s in xnn.steps if s.target in ("a", "b")) and "float" not in {s.kind for s in xnn.steps}


def test_cat_inputs_and_output_share_the_first_inputs_observation_point():
    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 2, 1), nn.Conv2d(1, 3, 1)

        def forward(self, x):
            return torch.cat([self.a(x), self.b(x)], 1)

    graph = build_graph(Cat().eval())
    obs = {s.name: s.obs for s in graph.steps}
    assert obs["a"] == obs["b"] == obs["cat"]
    assert len(graph.obs_names) == 2  # the input's and the shared one, renumbered 0..1
    assert len(graph.obs_names) == len(_torch_observer_instances(Cat().eval(), torch.rand(1, 1, 4, 4)))


def test_every_step_kind_has_one_integer_rule_and_the_planner_emits_only_known_kinds():
    handled = set(program._INTEGER_STEPS) | set(program._SHARED_CODES)
    assert not set(program._INTEGER_STEPS) & set(program._SHARED_CODES)  # one rule per kind
    assert handled == set(STEP_KINDS) - {"input", "output"}
    assert set(layouts._LAYOUT) <= set(STEP_KINDS)
    for arch in ARCHITECTURES:
        kinds = {s.kind for s in build_graph(make_model(arch)).steps}
        assert kinds <= set(STEP_KINDS), (arch, kinds - set(STEP_KINDS))
