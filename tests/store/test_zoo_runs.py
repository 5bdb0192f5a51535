"""Zoo runs: find a stored run of a (model, schemes, backends) setup, or compute and save it once."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

import qcal.store.zoo_runs as zoo_runs
from qcal.store import Store
from qcal.zoo import zoo

TWO = ("per_tensor_affine", "per_channel_symmetric")  # real presets: stored runs parse their schemes


def test_find_run_picks_the_newest_run_of_the_same_setup():
    runs = pd.DataFrame({
        "id": ["old", "new", "other"], "created": ["2026-01-01", "2026-02-01", "2026-03-01"],
        "model": ["m", "m", "m"], "schemes": ["a, b", "a, b", "a"], "backends": "fbgemm",
    })
    assert zoo_runs.find_run(runs, "m", ["a", "b"], ["fbgemm"]) == "new"
    assert zoo_runs.find_run(runs, "m", ["b"], ["fbgemm"]) is None
    assert zoo_runs.find_run(runs.iloc[0:0], "m", ["a"], ["fbgemm"]) is None


def test_scorable_models_are_the_zoo_models_with_a_data_set():
    names = zoo_runs.scorable_models()
    assert names and set(names) < set(zoo.names())
    assert all(zoo.info(n).data is not None for n in names)
    assert "resnet18_like" not in names  # random weights, no data set to score on


@pytest.fixture
def fake_compare_zoo(monkeypatch):
    """compare_zoo replaced by a tiny Comparison-like object; records each call."""
    calls = []

    def fake(model_name, schemes, backends, **kwargs):
        schemes = [getattr(s, "name", s) for s in schemes]  # names or resolved Schemes
        calls.append((model_name, schemes, list(backends), kwargs["eval_samples"]))
        frames = {"summary": pd.DataFrame({"scheme": schemes, "value": [0.5] * len(schemes)})}
        return SimpleNamespace(frames=lambda: frames, meta={"model": model_name, "schemes": schemes,
                                                            "backends": backends}, models={})

    monkeypatch.setattr(zoo_runs, "compare_zoo", fake)
    return calls


def test_find_or_compute_computes_and_saves_once_then_finds_the_stored_run(tmp_path, fake_compare_zoo):
    store = Store(tmp_path / "runs.sqlite")
    run_id, cmp = zoo_runs.find_or_compute_zoo_run("digits_mlp", TWO, ("fbgemm",), store=store,
                                                   eval_samples=7)
    assert cmp is not None and fake_compare_zoo == [("digits_mlp", list(TWO), ["fbgemm"], 7)]
    assert store.load(run_id).meta["model"] == "digits_mlp"
    again, cmp_again = zoo_runs.find_or_compute_zoo_run("digits_mlp", TWO, ("fbgemm",), store=store)
    assert (again, cmp_again) == (run_id, None) and len(fake_compare_zoo) == 1
    other, _ = zoo_runs.find_or_compute_zoo_run("digits_mlp", TWO[:1], ("fbgemm",), store=store)
    assert other != run_id and len(fake_compare_zoo) == 2  # another setup is another run
