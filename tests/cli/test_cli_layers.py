"""``qcal layers`` / ``qcal requant`` on a registered PT2E model (its factory returns the
convert_pt2e result): the printed frame is ``qcal.from_pt2e``'s, the worked element agrees with
the integer run, whose output equals ExecuTorch's delegate; a zoo model is calibrated as before."""

from __future__ import annotations

import io

import pandas as pd
import pytest

pytest.importorskip("executorch.runtime", reason="the pt2e extra (requirements-dev.txt installs it)")

from qcal.cli.main import main
from tests.cli.test_cli_silicon import registered  # noqa: F401  (the fixture)


def test_layers_of_a_registered_pt2e_model_is_from_pt2es_frame(registered, capsys):  # noqa: F811
    import qcal
    from qcal.export.executorch import lower_to_executorch, run_executorch
    from qcal.zoo.registry import load_named

    assert main(["layers", "--model", registered, "--format", "json"]) == 0
    printed = pd.read_json(io.StringIO(capsys.readouterr().out), dtype={"name": str})
    named = load_named(registered)
    qm = qcal.from_pt2e(named.model)
    expected = qm.layers()
    assert list(printed["name"]) == list(expected["name"]) == ["0", "3"]
    for got, want in zip(printed["requant_scale"], expected["requant_scale"], strict=True):
        assert got == pytest.approx(want, abs=1e-10)  # JSON keeps 10 decimals
    delegate = run_executorch(lower_to_executorch(named.model, (named.eval_x,)), named.eval_x)[0]
    assert (qm(named.eval_x) != delegate).sum() == 0
    assert main(["layers", "--model", registered]) == 0
    assert "scheme pt2e, backend xnnpack, 2 layers" in capsys.readouterr().out


def test_requant_of_a_registered_pt2e_model_agrees_with_the_engine(registered, capsys):  # noqa: F811
    assert main(["requant", "--model", registered, "--layer", "0", "--channel", "2", "--sample", "3"]) == 0
    out = capsys.readouterr().out
    assert "element (2, 4, 4) on xnnpack" in out
    worked, engine = (int(out.split(f"{w} ")[1].split(",")[0].split(".")[0]) for w in ("worked", "engine"))
    assert worked == engine
    assert main(["requant", "--model", registered, "--scheme", "fbgemm_default"]) == 1
    assert "its quantization is its own" in capsys.readouterr().err


def test_layers_of_a_zoo_model_still_calibrates(capsys):
    assert main(["layers", "--model", "digits_cnn", "--scheme", "xnnpack_per_tensor", "--format", "csv"]) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert len(frame) > 0 and set(frame["weight_qscheme"]) == {"per_tensor_symmetric"}


def test_a_pt2e_models_stored_run_is_found_whatever_schemes_are_asked(registered, tmp_path):  # noqa: F811
    from qcal.store.store import Store
    from qcal.store.zoo_runs import find_or_compute_zoo_run

    store = Store(tmp_path / "runs.sqlite")
    run_id, cmp = find_or_compute_zoo_run(registered, ["per_tensor_affine"], ["fbgemm"], store=store)
    assert cmp is not None and list(cmp.summary["scheme"]) == ["pt2e"] and cmp.meta["mode"] == "pt2e"
    again, cached = find_or_compute_zoo_run(registered, ["fbgemm_default", "qnnpack_default"], ["qnnpack"], store=store)
    assert (again, cached) == (run_id, None) and len(store.list()) == 1
