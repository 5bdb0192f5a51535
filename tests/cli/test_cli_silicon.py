"""``qcal silicon``: a registered PT2E model (its factory returns the convert_pt2e result), its
table equal to ``qcal.simulation_gap``'s, and ExecuTorch's delegate counted beside it."""

from __future__ import annotations

import io
import textwrap

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("executorch.runtime", reason="the pt2e extra (requirements-dev.txt installs it)")

from qcal.cli.main import main

MODULE = """
import numpy as np
import torch
from torch import nn

from qcal.export.pt2e_examples import quantize_pt2e


def build():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    calib = torch.from_numpy(np.load(__file__.replace("pt2e_team.py", "calib.npz"))["x"])
    return quantize_pt2e(model, calib, per_channel=True)
"""


@pytest.fixture
def registered(tmp_path, monkeypatch):
    (tmp_path / "pt2e_team.py").write_text(textwrap.dedent(MODULE))
    (tmp_path / "models.toml").write_text('[models.teampt2e]\nfactory = "pt2e_team:build"\ncalib = "calib.npz"\n'
                                          'eval = "eval.npz"\ndescription = "a converted PT2E model"\n')
    g = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=(g.standard_normal((16, 1, 8, 8)) * 2).astype(np.float32))
    np.savez(tmp_path / "eval.npz", x=(g.standard_normal((24, 1, 8, 8)) * 2).astype(np.float32))
    monkeypatch.setenv("QCAL_MODELS", str(tmp_path / "models.toml"))
    return "teampt2e"


def test_silicon_prints_simulation_gaps_table_for_a_registered_pt2e_model(registered, capsys):
    import qcal
    from qcal.export.pt2e_examples import named_pt2e

    assert main(["silicon", "--model", registered, "--samples", "24", "--format", "csv"]) == 0
    printed = pd.read_csv(io.StringIO(capsys.readouterr().out), dtype={"module": str}).fillna("")
    named = named_pt2e(registered, samples=24)
    assert "converted by its factory" in named.source
    expected = qcal.simulation_gap(named.converted, named.x).layers
    pd.testing.assert_frame_equal(printed, expected, check_dtype=False)
    assert main(["silicon", "--model", registered, "--samples", "24", "--delegate"]) == 0
    out = capsys.readouterr().out
    assert "delegate: 0 of 72 outputs differ from qcal" in out


def test_silicon_refuses_an_unknown_model(capsys):
    assert main(["silicon", "--model", "no_such_model"]) == 1
    assert "unknown zoo model 'no_such_model'" in capsys.readouterr().err
