"""Simulation vs silicon: torch's converted PT2E module against ExecuTorch's XNNPACK delegate,
each differing element explained by the one cause that, switched to torch's way, gives torch's value.

The delegate is the oracle: the whole-model count is the delegate's against torch's module; every
count is recomputed from the tensors, never from the frame alone.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("executorch.runtime", reason="the pt2e extra (requirements-dev.txt installs it)")

from test_pt2e import Residual, Separable, _converted

import qcal
from qcal.export.executorch import lower_to_executorch, run_executorch
from qcal.export.silicon import CAUSES, _fused_layers, _simulate, layer_variants


def _case(model_cls, per_channel: bool):
    torch.manual_seed(1)
    x = torch.randn(50, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 2
    return _converted(model_cls().eval(), x, per_channel, seed=3), x


@pytest.mark.parametrize("model_cls, per_channel", [(Separable, True), (Residual, False)], ids=["separable", "residual"])
def test_causes_add_up_and_the_logits_are_the_delegates_own_difference(model_cls, per_channel):
    converted, x = _case(model_cls, per_channel)
    gap = qcal.simulation_gap(converted, x)
    delegate = run_executorch(lower_to_executorch(converted, (x,)), x)[0]
    assert gap.logits == int((converted(x) != delegate).sum())  # torch's simulation vs the silicon
    assert gap.outputs == delegate.numel()
    frame = gap.layers
    assert list(frame["layer"]) == qcal.from_pt2e(converted).fused_nodes
    assert (frame[list(CAUSES)].sum(axis=1) == frame["differing"]).all()
    assert frame["differing"].iloc[-1] == gap.logits  # the last layer's codes are the logits
    assert frame["inherited"].iloc[0] == 0  # the first layer reads the model's own input
    assert frame["differing"].sum() > 0 and (frame["max_step"] >= (frame["differing"] > 0)).all()
    long = gap.by_cause()
    assert long["count"].sum() == frame["differing"].sum()


@pytest.mark.parametrize("model_cls", [Separable, Residual])
def test_every_cause_switched_is_torchs_value_and_none_is_xnnpacks(model_cls):
    converted, x = _case(model_cls, True)
    pm = qcal.from_pt2e(converted)
    _, env = _simulate(converted, (x,))
    sim_codes = {}
    for layer in _fused_layers(pm):
        variants = layer_variants(pm, layer, env)
        torch_codes = env[layer.quantize.name].to(torch.int64)
        assert torch.equal(variants["sim"], torch_codes), layer.node.name
        sim_codes[layer.node.name] = torch_codes
        # XNNPACK's arithmetic on torch's inputs, as qcal's engine computes it
        first = layer.node.name == pm.fused_nodes[0]
        if first:
            assert torch.equal(variants["exact"], pm.codes(x)[layer.node.name].q.to(torch.int64))
    assert set(sim_codes) == set(pm.fused_nodes)


def test_counts_match_a_direct_comparison_layer_by_layer():
    converted, x = _case(Residual, True)
    gap = qcal.simulation_gap(converted, x)
    pm = qcal.from_pt2e(converted)
    _, env = _simulate(converted, (x,))
    exact = pm.codes(x)
    for row, layer in zip(gap.layers.itertuples(), _fused_layers(pm), strict=True):
        torch_codes = env[layer.quantize.name].to(torch.int64)
        ours = exact[layer.node.name].q.to(torch.int64)
        assert row.differing == int((torch_codes != ours).sum())
        assert row.max_step == int((torch_codes - ours).abs().max())
        assert row.elements == ours.numel()


class _NoBias(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.fc = nn.Linear(4 * 8 * 8, 3, bias=False)

    def forward(self, x):
        return self.fc(torch.relu(self.c(x)).flatten(1))


def test_a_model_with_no_difference_gives_zeros():
    torch.manual_seed(6)
    x = torch.randn(8, 1, 8, 8) * 2
    converted = _converted(_NoBias().eval(), x, True, seed=7)
    zero = torch.zeros(8, 1, 8, 8)  # every code is the zero point: both sides compute exactly 0
    gap = qcal.simulation_gap(qcal.from_pt2e(converted), zero)
    assert gap.logits == 0 and gap.outputs == 24
    assert (gap.layers[["differing", *CAUSES, "max_step"]] == 0).all().all()
    assert list(gap.layers["elements"]) == [8 * 4 * 64, 24]


def test_a_pools_zero_point_inside_xnnpacks_rounding_is_the_rounding_cause():
    from qcal.export.pt2e import Codes
    from qcal.export.silicon import _attribute, _mean_variants

    # mean of codes [1, 1, 0, 0] (sx = so = 0.1, zx = 0, zo = 1) is exactly 0.5 steps:
    # XNNPACK nearbyint(0.5 + 1) = 2, torch rint(0.5) + 1 = 1
    x = Codes(torch.tensor([[[[1, 1], [0, 0]]]], dtype=torch.int8), 0.1, 0)
    v = torch.nn.functional.adaptive_avg_pool2d((x.q.float() - 0) * torch.tensor(0.1), 1)  # torch's float mean
    variants = {k: t.to(torch.int64) + 1 for k, t in _mean_variants((x,), v, 0.1, 1).items()}
    assert variants["exact"].item() == 2 and variants["sim"].item() == 1
    counts = _attribute(variants["exact"], variants["sim"], variants)
    assert counts == {"differing": 1, "inherited": 0, "accumulation": 0, "rounding": 1, "clamping": 0, "other": 0}
