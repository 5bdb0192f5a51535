"""Scales vs calibration samples: checkpoints of one pass equal calibrating on that prefix."""

from __future__ import annotations

import itertools

import pandas as pd
import pytest
import torch
from torch import nn

import qcal
from qcal.calibration.trajectory import activation_specs, scale_trajectory, settling_samples


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 5)).eval()


@pytest.mark.parametrize("observers", [("minmax", "moving_average"), ("histogram", "percentile"),
                                       ("entropy", "mse")])
def test_each_checkpoint_equals_calibrating_on_the_samples_seen_so_far(observers):
    model = _model()
    x = torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 3
    specs = activation_specs(observers)
    traj = scale_trajectory(model, x, specs, checkpoints=[10, 25, 40], batch_size=64)
    assert set(traj["samples"]) == {10, 25, 40} and set(traj["observer"]) == set(observers)
    bounds = [0, 10, 25, 40]
    for k, stop in enumerate(bounds[1:], start=1):
        batches = [x[a:b] for a, b in itertools.pairwise(bounds[: k + 1])]
        for spec in specs:
            scheme = qcal.Scheme("s", qcal.QSpec("qint8", "per_tensor_symmetric"), spec)
            want = qcal.calibrate(model, batches, scheme).scales()
            want = want[want["tensor"] == "activation"].set_index("layer")
            got = traj[(traj["observer"] == spec.observer) & (traj["samples"] == stop)].set_index("layer")
            assert list(got.index) == list(want.index)
            assert (got["scale"] == want["scale"]).all() and (got["zero_point"] == want["zero_point"]).all()


def test_settling_samples_finds_the_first_count_after_the_last_move():
    traj = pd.DataFrame({"observer": "minmax", "layer": "a", "samples": [1, 2, 4, 8, 16],
                         "scale": [0.5, 0.9, 1.02, 0.995, 1.0], "zero_point": 0,
                         "clip_min": 0.0, "clip_max": 1.0})
    assert settling_samples(traj, 0.01)["samples"].tolist() == [8]
    assert settling_samples(traj, 0.05)["samples"].tolist() == [4]
    assert settling_samples(traj, 0.0)["samples"].tolist() == [16]


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"checkpoints": [0, 5]}, "checkpoints must be sample counts in 1..8"),
    ({"checkpoints": [9]}, "checkpoints must be sample counts in 1..8"),
    ({"mode": "fast"}, "unknown mode 'fast'"),
])
def test_bad_arguments_are_named(kwargs, expected):
    with pytest.raises(ValueError, match=expected):
        scale_trajectory(_model(), torch.randn(8, 1, 8, 8), **kwargs)
