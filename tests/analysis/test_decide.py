"""sensitivity and recommend: rows reproducible from their recipes, executors give the same
frames, the search honours its limits; recipe files and the CLI commands."""

import math
import pickle
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest
import torch

import qcal
from qcal import datasets, zoo
from qcal.analysis.recommend import STEP_COLUMNS, recommend
from qcal.analysis.sensitivity import SENSITIVITY_COLUMNS, sensitivity
from qcal.cli.main import main
from qcal.io.recipe_files import read_recipe, write_recipe
from qcal.recipes import Recipe


@pytest.fixture(scope="module")
def mlp():
    s = datasets.digits_splits()
    x, y = s.test
    return (zoo.load("digits_mlp"), datasets.calib_batches(s.calib[0], 100),
            datasets.batches(x[:200], y[:200], 100), datasets.batches(x[200:400], y[200:400], 100))


def _accuracy(qm, batches):
    hits = sum(int((qm(x).argmax(1) == y).sum()) for x, y in batches)
    return hits / sum(len(y) for _, y in batches)


def test_sensitivity_rows_are_reproduced_by_their_recipes(mlp, one_thread):
    model, calib, ev, _ = mlp
    rows = sensitivity(model, calib, ev, "per_tensor_affine")
    assert list(rows.columns) == SENSITIVITY_COLUMNS
    assert list(rows["layer"]) == ["fc1", "fc1", "fc2", "fc2", "fc3", "fc3"]
    assert list(rows["mode"]) == ["only", "all_but"] * 3
    for _, row in rows.iterrows():
        assert row["value"] == _accuracy(qcal.calibrate(model, calib, row["recipe"]), ev)
        assert math.isclose(row["drop"], row["fp32_value"] - row["value"])
        assert 10 < row["sqnr_db"] < 80
    assert rows.loc[rows["mode"] == "only", "recipe"].iloc[0] == Recipe(None, {"fc1": "per_tensor_affine"},
                                                                          name="only fc1 (per_tensor_affine)")


def test_sensitivity_on_an_executor_gives_the_same_frame(mlp, one_thread):
    model, calib, ev, _ = mlp
    here = sensitivity(model, calib, ev, "per_channel_affine", "qnnpack")
    with ThreadPoolExecutor(2) as pool:
        there = sensitivity(model, calib, ev, "per_channel_affine", "qnnpack", executor=pool)
    pd.testing.assert_frame_equal(here, there)


def test_a_sweep_job_is_a_recipe_and_a_pickled_shared_pass_builds_it_the_same(mlp):
    from qcal.analysis.sweep import SharedEval, Sweep, score_jobs

    model, calib, ev, _ = mlp
    sweep = Sweep(model, calib, ev, [Recipe("per_tensor_affine")])
    # recipes nobody observed for: the copy must build them from what it was sent
    recipes = [sweep.calibrated.prepare(Recipe("per_channel_symmetric", {n: None}, name=n)) for n in sweep.layers]
    jobs = [(r, name) for r, name in zip(recipes, sweep.layers, strict=True)]
    shared = SharedEval(sweep.calibrated.without_data(), "fbgemm", sweep.batches, sweep.fp32, sweep.labelled)
    sent = pickle.dumps(shared)
    job_bytes = max(len(pickle.dumps(job)) for job in jobs)
    print(f"shared {len(sent)} bytes once; a job {job_bytes} bytes; the float model {len(pickle.dumps(model))} bytes")
    assert job_bytes < 2_000 < len(pickle.dumps(model))
    copy = pickle.loads(sent)
    assert copy.calibrated.calib_data is None and copy.calibrated.observed.fx_module is None
    assert score_jobs(copy, jobs) == score_jobs(shared, jobs)  # built elsewhere, the same values
    # a recipe accepted after the copy was sent: the copy plans it itself (re-traced model)
    late = sweep.calibrated.prepare(Recipe("per_tensor_affine", {sweep.layers[0]: "per_channel_symmetric"},
                                           name="late"))
    assert sweep.calibrated.passes == 1  # no observation point of its own: nothing to send again
    assert score_jobs(copy, [(late, None)]) == score_jobs(shared, [(late, None)])
    assert copy.calibrated.observed.fx_module is not None


def test_recommend_stays_within_its_limits_and_its_value_is_reproducible(mlp, one_thread):
    model, calib, ev, test = mlp
    rec = recommend(model, calib, ev, schemes=["per_tensor_affine", "per_tensor_symmetric"], max_drop=0.0,
                    max_fp32_layers=1, test_data=test)
    assert list(rec.steps.columns) == STEP_COLUMNS
    assert len(rec.fp32_layers) <= 1
    assert rec.value == _accuracy(qcal.calibrate(model, calib, rec.recipe), ev)
    assert rec.test_value == _accuracy(qcal.calibrate(model, calib, rec.recipe), test)
    best_uniform = rec.steps.loc[rec.steps["layer"] == "(all layers)", "value"].max()
    assert rec.value >= best_uniform
    assert rec.evaluations == len(rec.steps) and rec.passes >= 1
    with ThreadPoolExecutor(2) as pool:
        again = recommend(model, calib, ev, schemes=["per_tensor_affine", "per_tensor_symmetric"], max_drop=0.0,
                          max_fp32_layers=1, test_data=test, executor=pool)
    assert again.recipe == rec.recipe
    pd.testing.assert_frame_equal(again.steps, rec.steps)


def test_recommend_refuses_bad_limits(mlp):
    model, calib, ev, _ = mlp
    with pytest.raises(ValueError, match="max_drop is a fraction"):
        recommend(model, calib, ev, max_drop=1.5)
    with pytest.raises(ValueError, match="max_fp32_layers must be"):
        recommend(model, calib, ev, max_fp32_layers=-1)


def test_compare_takes_a_recipe_as_one_more_column(mlp, one_thread):
    model, calib, ev, _ = mlp
    recipe = Recipe("per_tensor_affine", {"fc3": None}, name="fc3 fp32")
    cmp = qcal.compare(model, calib, ev, ["per_tensor_affine", recipe])
    assert list(cmp.summary["scheme"]) == ["per_tensor_affine", "fc3 fp32"]
    assert set(cmp.layers.loc[cmp.layers["scheme"] == "fc3 fp32", "layer"]) == {"fc1", "fc2"}
    assert Recipe.from_data(cmp.meta["recipes"]["fc3 fp32"]) == recipe


def test_recipe_files_refuse_garbage_naming_the_file(tmp_path):
    bad = tmp_path / "r.toml"
    bad.write_text("default = [")
    with pytest.raises(ValueError, match=r"r\.toml: not a TOML recipe file"):
        read_recipe(bad)
    bad.write_text('default = "per_tensor_affine"\nlayer = {}\n')
    with pytest.raises(ValueError, match="unknown recipe fields"):
        read_recipe(bad)


def test_cli_recommend_saves_a_recipe_that_compare_reads(tmp_path, capsys):
    out = tmp_path / "rec.toml"
    assert main(["recommend", "--model", "digits_mlp", "--schemes", "per_tensor_affine",
                 "--max-drop", "0.005", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "held-out half" in printed and "choice" in printed
    recipe = read_recipe(out)
    assert recipe.name == "recommended"
    write_recipe(recipe, tmp_path / "rec.json")
    assert read_recipe(tmp_path / "rec.json") == recipe
    assert main(["compare", "--model", "digits_mlp", "--schemes", "per_tensor_affine", "--recipe", str(out),
                 "--no-save", "--format", "csv"]) == 0
    assert "recommended" in capsys.readouterr().out


def test_cli_max_drop_is_a_fraction(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["recommend", "--max-drop", "2"])
    assert exc.value.code == 2
    assert "must be a fraction between 0 and 1" in capsys.readouterr().err


def test_a_recipe_needing_unobserved_points_costs_one_more_pass_and_matches_calibrate(mlp):
    from qcal.calibration.calibrate import Calibrated

    _, calib, ev, _ = mlp
    model = zoo.load("digits_cnn")
    session = Calibrated(model, calib, [Recipe("per_tensor_affine", name="per_tensor_affine")])
    assert session.passes == 1
    # the second conv alone int8: its input, the fp32 pool's output, is observed alone (uniform
    # schemes observe the first conv's output and the int8 pool's with one observer): a new point
    recipe = Recipe(None, {"conv_3x3_64": "per_tensor_affine"})
    qm = session.build(recipe)
    assert session.passes == 2
    x = ev[0][0]
    assert torch.equal(qm(x), qcal.calibrate(model, calib, recipe)(x))
    labels = set(session.build("per_tensor_affine").scales().query("tensor == 'activation'")["layer"])
    assert {"conv_3x3_32a", "conv_3x3_64", "fc1", "fc2"} <= labels  # module names, as before recipes
