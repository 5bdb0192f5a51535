"""Registered models: a TOML registry and the qcal.models entry-point group."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import torch

from qcal.cli.main import main
from qcal.zoo.registry import catalogue, load_named, registered

MODULE = """
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))

def raises():
    raise RuntimeError("kaboom in the team's factory")
"""

TOML = """
[models.teamnet]
factory = "calendar:build"
weights = "w.pt"
calib = "calib.npz"
eval = "eval.npz"
description = "the team's net"

[models.nofile]
factory = "calendar:build"
calib = "missing.npz"
eval = "eval.npz"

[models.badfactory]
factory = "calendar:no_such_thing"
calib = "calib.npz"
eval = "eval.npz"

[models.raises]
factory = "calendar:raises"
calib = "calib.npz"
eval = "eval.npz"

[models.wrongshape]
factory = "calendar:build"
calib = "wide.npz"
eval = "eval.npz"
"""


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A TOML registry whose module is named like a stdlib module (calendar), data files."""
    (tmp_path / "calendar.py").write_text(textwrap.dedent(MODULE))
    (tmp_path / "models.toml").write_text(TOML)
    g = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=g.standard_normal((16, 1, 8, 8)).astype(np.float32))
    np.savez(tmp_path / "eval.npz", x=g.standard_normal((24, 1, 8, 8)).astype(np.float32),
             y=g.integers(0, 3, 24))
    np.savez(tmp_path / "wide.npz", x=g.standard_normal((4, 1, 9, 9)).astype(np.float32))
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 6 * 6, 3))
    torch.save(net.state_dict(), tmp_path / "w.pt")
    monkeypatch.setenv("QCAL_MODELS", str(tmp_path / "models.toml"))
    monkeypatch.setenv("QCAL_STORE", str(tmp_path / "runs.sqlite"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    return tmp_path, net


def test_a_registered_model_loads_from_its_folder_without_shadowing_installed_modules(registry):
    folder, net = registry
    import calendar

    before = list(sys.path)
    named = load_named("teamnet")
    assert sys.modules["calendar"] is calendar and hasattr(calendar, "month_name")  # stdlib intact
    assert sys.path[: len(before)] == before and sys.path[-1] == str(folder)  # appended, never prepended
    for key, value in net.state_dict().items():
        assert torch.equal(named.model.state_dict()[key], value)  # weights from w.pt
    assert named.calib.shape == (16, 1, 8, 8) and named.eval_y.shape == (24,)
    assert named.description == "the team's net"


def test_every_bad_entry_is_named_and_the_good_one_stays_usable(registry):
    models, problems = catalogue()
    assert "teamnet" in set(models["name"]) and "digits_cnn" in set(models["name"])
    by_name = {p.name: p.message for p in problems}
    assert set(by_name) == {"nofile", "badfactory", "raises", "wrongshape"}
    assert "calib file" in by_name["nofile"] and "missing.npz does not exist" in by_name["nofile"]
    assert "has no attribute 'no_such_thing'" in by_name["badfactory"]
    assert "kaboom in the team's factory" in by_name["raises"]
    assert "calib inputs of shape (4, 1, 9, 9) do not fit the model" in by_name["wrongshape"]


@pytest.mark.parametrize(("toml", "expected"), [
    (None, "QCAL_MODELS names a file that does not exist"),
    ("[models\n", "not a readable TOML file"),
    ("[other]\n", "no [models.NAME] tables"),
    ('[models.x]\nfactory = "calendar"\ncalib = "calib.npz"\neval = "eval.npz"\n', "must look like 'module:callable'"),
    ('[models.x]\nfactory = "calendar:build"\ncalib = "calib.npz"\ncolour = 1\n', "missing eval; unknown field(s) colour"),
    ('[models.digits_cnn]\nfactory = "calendar:build"\ncalib = "calib.npz"\neval = "eval.npz"\n', "the name is taken"),
])
def test_a_bad_registry_file_is_a_problem_not_an_exception(registry, toml, expected):
    folder, _ = registry
    path = folder / "bad.toml"
    if toml is not None:
        path.write_text(toml)
    models, problems = registered(path)
    assert not models and len(problems) == 1 and expected in problems[0].message


def test_a_package_registers_models_through_the_entry_point_group(registry, monkeypatch):
    folder, _ = registry
    site = folder / "site"
    (site / "teamplug").mkdir(parents=True)
    (site / "teamplug" / "__init__.py").write_text(
        "def models():\n    return {'factory': 'calendar:build', 'calib': '../../calib.npz',"
        " 'eval': '../../eval.npz', 'description': 'from a plug-in'}\n")
    (site / "teamplug" / "calendar.py").write_text(textwrap.dedent(MODULE))
    info = site / "teamplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: teamplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[qcal.models]\nplugnet = teamplug:models\n")
    monkeypatch.syspath_prepend(str(site))
    models, _ = registered()
    assert models["plugnet"].description == "from a plug-in"
    assert models["plugnet"].folder == (site / "teamplug").resolve()
    assert load_named("plugnet").model(torch.zeros(1, 1, 8, 8)).shape == (1, 3)


def test_cli_lists_registered_models_names_problems_and_compares_one(registry, capsys):
    assert main(["compare", "--list-models", "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    assert "teamnet," in out and "digits_mobilenet," in out
    assert "qcal: registry problem:" in err and "[raises]" in err and "kaboom" in err
    assert main(["compare", "--model", "teamnet", "--schemes", "per_tensor_affine",
                 "--format", "csv", "--no-save"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].startswith("per_tensor_affine,fbgemm,accuracy,")


def test_cli_a_broken_registered_model_is_one_line_naming_it(registry, capsys):
    assert main(["compare", "--model", "raises", "--no-save"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("qcal: error: registered model 'raises'") and "kaboom" in err
    assert "Traceback" not in err
