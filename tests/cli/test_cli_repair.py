"""``qcal repair`` and ``qcal.repair.table.repair_table``: one scheme, plain and repaired."""

import json

import pytest

from qcal.cli.main import main
from qcal.store import Store

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads cost more than they give


def test_repair_prints_each_chain_with_the_settings_that_reproduce_it(capsys):
    assert main(["repair", "--model", "digits_mobilenet", "--repairs", "none,equalize,equalize+adaround",
                 "--iterations", "20", "--samples", "32", "--seed", "5", "--eval-samples", "200",
                 "--format", "json"]) == 0
    rows = {r["repair"]: r for r in json.loads(capsys.readouterr().out)}
    assert list(rows) == ["none", "equalize", "equalize+adaround"]
    assert rows["equalize+adaround"]["settings"] == ("equalize(relu6=bounded) + adaround(iterations=20, "
                                                      "samples=32, seed=5)")
    assert rows["equalize"]["float_change"] < 1e-4 and rows["none"]["float_change"] == 0
    assert rows["equalize"]["int8_metric"] > rows["none"]["int8_metric"] + 0.1  # per-tensor repaired
    for r in rows.values():  # drops are against the original fp32 model
        assert r["drop"] == pytest.approx(rows["none"]["float_metric"] - r["int8_metric"], abs=1e-9)


def test_a_built_four_bit_scheme_and_bad_repair_names(capsys):
    scheme = "name=w4;w=per_channel_symmetric/minmax/quant_min=-8/quant_max=7;a=per_tensor_affine/minmax"
    assert main(["repair", "--model", "digits_mlp", "--scheme", scheme, "--repairs", "none",
                 "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith("repair,settings,float_metric")
    with pytest.raises(SystemExit):
        main(["repair", "--repairs", "equalize,polish"])
    assert "unknown repair 'polish'" in capsys.readouterr().err


def test_compare_takes_repair_chains_and_the_saved_run_says_what_was_repaired(capsys, tmp_path):
    store = str(tmp_path / "runs.sqlite")
    assert main(["compare", "--model", "digits_mlp", "--schemes", "per_tensor_symmetric,per_channel_symmetric+equalize",
                 "--repairs", "equalize+correct_bias", "--eval-samples", "100", "--format", "json",
                 "--store", store]) == 0
    out = capsys.readouterr()
    assert [r["scheme"] for r in json.loads(out.out)] == [
        "per_tensor_symmetric", "per_channel_symmetric + equalize", "per_tensor_symmetric + equalize + correct_bias"]
    run_id = out.err.split("saved run ")[1].split()[0]
    assert main(["runs", "show", run_id, "--store", store]) == 0  # prints the metadata, repairs included
    assert '"per_tensor_symmetric + equalize + correct_bias": [' in capsys.readouterr().out
    meta = Store(store).load(run_id).meta
    assert meta["repairs"]["per_tensor_symmetric + equalize + correct_bias"] == [
        {"name": "equalize", "relu6": "bounded"}, {"name": "correct_bias", "method": "empirical"}]
    assert main(["compare", "--repairs", "equalize+polish", "--no-save"]) == 1
    assert "unknown repair 'polish'" in capsys.readouterr().err


def test_recommend_prints_the_repair_it_proposes_and_saves_its_settings(capsys, tmp_path):
    from qcal.io.recipe_files import read_recipe

    args = ["recommend", "--model", "digits_mobilenet", "--schemes", "per_tensor_symmetric", "--max-drop", "0.01"]
    assert main([*args, "--out", str(tmp_path / "r.toml")]) == 0
    assert "repair: equalize: per_tensor_symmetric alone drops" in capsys.readouterr().out
    assert read_recipe(tmp_path / "r.toml").repairs == (("equalize", (("relu6", "bounded"),)),)
    assert main([*args, "--repairs", "none", "--out", str(tmp_path / "f.toml")]) == 0  # fp32 fallback instead
    fallback = read_recipe(tmp_path / "f.toml")
    assert not fallback.repairs and "fp32" in dict(fallback.to_data()["layers"]).values()
