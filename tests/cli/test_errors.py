"""Bad input at every entry point gets a message naming the problem and what is accepted.

Python API errors already covered elsewhere are not repeated here (see the report of issue 9:
test_calibration, test_comparison, test_observers, test_schemes, test_checkpoints,
test_datasets, test_zoo, test_store, test_run_files). This file holds the missing Python
cases and the CLI: every refusal exits non-zero with ONE line ``qcal: error: ...`` on
stderr and no traceback.
"""

from __future__ import annotations

import re
import sys
import textwrap
import warnings

import pytest
import torch
from store_cases import META, make_frames, read_only
from torch import nn

from qcal.cli.main import main
from qcal.store.store import Store

USER_MODELS = """
import torch
from torch import nn

def net():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))

def crashes():
    raise RuntimeError("kaboom: no weights here")

def not_a_model():
    return [1, 2, 3]
"""


@pytest.fixture
def user(tmp_path, monkeypatch):
    """A user's model module on sys.path, data files beside it, and a private run store."""
    (tmp_path / "errors_user_models.py").write_text(textwrap.dedent(USER_MODELS))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "errors_user_models", raising=False)
    monkeypatch.setenv("QCAL_STORE", str(tmp_path / "runs.sqlite"))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g)

    def data(name: str, inputs: torch.Tensor = x, labels: torch.Tensor | None = y) -> str:
        path = tmp_path / name
        torch.save({"inputs": inputs} if labels is None else {"inputs": inputs, "labels": labels}, path)
        return str(path)

    return data


def cli_error(argv: list[str], capsys) -> str:
    """Run the CLI expecting a refusal; return its one error message (after ``qcal: error: ``)."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code not in (0, None), err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("qcal: error: ")]
    assert len(lines) == 1 and err.rstrip("\n").endswith(lines[0]), err  # one line, the last
    return lines[0].removeprefix("qcal: error: ")


COMPARE = ["compare", "--schemes", "per_tensor_affine", "--no-save"]


# ---- models and data through `qcal compare` -------------------------------------------------


def test_cli_a_model_module_that_does_not_import_says_where_it_is_looked_for(user, capsys):
    message = cli_error([*COMPARE, "--model", "nosuchmodule:factory", "--data", user("d.pt")], capsys)
    assert message.startswith("module 'nosuchmodule' not found; it must be importable from here")


@pytest.mark.parametrize(("factory", "expected"), [
    ("nothing", r"'errors_user_models:nothing': 'errors_user_models' has no attribute 'nothing'; callables there include: crashes, "),
    ("crashes", r"'errors_user_models:crashes': calling crashes\(\) failed with RuntimeError: kaboom: no weights here"),
    ("not_a_model", r"'errors_user_models:not_a_model': the factory returned a list, not a torch.nn.Module"),
])
def test_cli_a_broken_model_factory_is_named(user, capsys, factory, expected):
    message = cli_error([*COMPARE, "--model", f"errors_user_models:{factory}", "--data", user("d.pt")], capsys)
    assert re.match(expected, message), message


def test_cli_an_unknown_zoo_model_lists_the_zoo(capsys):
    message = cli_error([*COMPARE, "--model", "resnet50"], capsys)
    assert message.startswith("unknown zoo model 'resnet50'; valid names: digits_cnn, ")


@pytest.mark.parametrize(("flag", "value", "expected"), [
    ("--backends", "fbgemm,bogus", "unknown backend 'bogus'; expected a comma list of: fbgemm, qnnpack, onnx, q31"),
    ("--schemes", "int4", "unknown scheme 'int4'; expected 'all' or a comma list of: per_tensor_affine, "),
])
def test_cli_unknown_scheme_or_backend_lists_the_valid_names(capsys, flag, value, expected):
    assert cli_error(["compare", flag, value, "--no-save"], capsys).startswith(expected)


def test_cli_a_user_model_without_data_asks_for_a_data_file(user, capsys):
    message = cli_error([*COMPARE, "--model", "errors_user_models:net"], capsys)
    assert message.startswith("a module:factory model needs --data FILE (.pt, .npz or .safetensors")


def test_cli_missing_and_corrupt_data_files_are_named(user, tmp_path, capsys):
    missing = str(tmp_path / "missing.pt")
    assert cli_error([*COMPARE, "--model", "errors_user_models:net", "--data", missing], capsys) == f"{missing}: no such file"
    cut = tmp_path / "cut.pt"
    with open(user("whole.pt"), "rb") as f:
        cut.write_bytes(f.read()[:300])
    message = cli_error([*COMPARE, "--model", "errors_user_models:net", "--data", str(cut)], capsys)
    assert message.startswith(f"{cut}: truncated or corrupt torch file")


def test_cli_data_with_nan_or_inf_says_how_many(user, capsys):
    x = torch.randn(16, 1, 8, 8)
    x[0, 0, 0, :3], x[9, 0, 1, 1] = float("nan"), float("inf")
    path = user("nan.pt", x)
    message = cli_error([*COMPARE, "--model", "errors_user_models:net", "--data", path], capsys)
    assert message == f"{path}: inputs hold 4 NaN or Inf values in 2 of 16 samples; clean or drop those samples"


def test_cli_empty_data_is_refused(user, capsys):
    path = user("empty.pt", torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))
    message = cli_error([*COMPARE, "--model", "errors_user_models:net", "--data", path], capsys)
    assert message == f"{path} holds 0 samples: too few to calibrate on some and evaluate on the rest"


def test_cli_inputs_of_the_wrong_shape_name_the_shape(user, capsys):
    path = user("rgb.pt", torch.randn(16, 3, 8, 8))
    message = cli_error([*COMPARE, "--model", "errors_user_models:net", "--data", path], capsys)
    assert message.startswith("eval batch of shape (8, 3, 8, 8) does not fit the model: ")
    assert "expected input[8, 3, 8, 8] to have 1 channels" in message


@pytest.mark.parametrize(("labels", "expected"), [
    (torch.full((16,), 3), "label 3 is out of range for a model with 3 outputs; labels must be class indices 0..2"),
    (torch.full((16,), -1), "label -1 is out of range for a model with 3 outputs; labels must be class indices 0..2"),
    (torch.zeros(16, 2, dtype=torch.long), "labels must be 1-D class indices, got shape (16, 2)"),
    (torch.zeros(9, dtype=torch.long), "9 labels for 16 inputs; the counts must match"),
])
def test_cli_labels_that_do_not_match_the_outputs_are_refused(user, capsys, labels, expected):
    message = cli_error([*COMPARE, "--model", "errors_user_models:net", "--data", user("y.pt", labels=labels)], capsys)
    assert expected in message


def test_cli_weights_that_are_not_a_state_dict_of_the_model_are_listed(user, capsys):
    message = cli_error([*COMPARE, "--model", "errors_user_models:net", "--data", user("d.pt"),
                         "--state-dict", user("w.pt")], capsys)
    assert "state_dict does not match the model: 4 missing (e.g. 0.weight, 0.bias, 3.weight, 3.bias)" in message


# ---- the run store through `qcal runs` / `qcal report` ------------------------------------


@pytest.mark.parametrize("argv", [
    ["runs", "show", "0123456789ab"],
    ["runs", "delete", "0123456789ab"],
    ["runs", "export", "0123456789ab"],
    ["report", "0123456789ab"],
], ids=["show", "delete", "export", "report"])
def test_cli_a_run_id_that_does_not_exist_is_named_with_the_list_command(tmp_path, capsys, argv):
    store = tmp_path / "runs.sqlite"
    Store(store).save(make_frames(), META)
    message = cli_error([*argv, "--store", str(store)], capsys)
    assert message == f"no run '0123456789ab' in {store}; `python -m qcal runs list` shows the ids"


def test_cli_a_corrupted_store_file_says_to_move_it_away(tmp_path, capsys):
    bad = tmp_path / "runs.sqlite"
    bad.write_bytes(b"not sqlite" * 500)
    message = cli_error(["runs", "list", "--store", str(bad)], capsys)
    assert message.startswith(f"the run store {bad} is corrupted or not an SQLite database")
    assert "Move it away" in message and "QCAL_STORE" in message


def test_cli_a_read_only_store_says_so_and_names_QCAL_STORE(tmp_path, capsys):
    (tmp_path / "ro").mkdir()
    store, run_file = tmp_path / "ro" / "runs.sqlite", tmp_path / "run.sqlite"
    other = Store(tmp_path / "other.sqlite")
    other.export(other.save(make_frames(), META), run_file)
    Store(store).save(make_frames(1), META)
    with read_only(tmp_path / "ro"):
        message = cli_error(["runs", "import", str(run_file), "--store", str(store)], capsys)
    assert message.startswith(f"cannot save a run in the run store {store}: the location is read-only")
    assert "QCAL_STORE" in message


def test_cli_importing_a_file_that_is_not_a_run_file_is_refused(tmp_path, capsys):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"garbage" * 100)
    message = cli_error(["runs", "import", str(junk), "--store", str(tmp_path / "s.sqlite")], capsys)
    assert message.startswith(f"{junk} is not a qcal run file: it is not an SQLite database")


def test_cli_a_run_command_without_its_run_id_says_what_it_needs(tmp_path, capsys):
    assert cli_error(["runs", "show", "--store", str(tmp_path / "s.sqlite")], capsys) == "'runs show' needs a run id"


def test_cli_show_of_a_frame_the_run_does_not_hold_lists_its_frames(tmp_path, capsys):
    store = tmp_path / "runs.sqlite"
    run_id = Store(store).save(make_frames(), META)
    message = cli_error(["runs", "show", run_id, "--frame", "sumary", "--store", str(store)], capsys)
    assert message == f"run {run_id} has no frame 'sumary'; its frames: summary, layers, scales, histograms, samples, qm_layers"


def test_cli_report_of_a_run_that_is_not_a_comparison_says_so(tmp_path, capsys):
    store = tmp_path / "runs.sqlite"
    run_id = Store(store).save({"summary": make_frames()["summary"].drop(columns="metric")}, META)
    message = cli_error(["report", run_id, "--store", str(store), "-o", str(tmp_path / "r.html")], capsys)
    assert message == (f"run {run_id} is not a comparison run: its frames lack 'metric'; "
                       "reports need the frames `qcal compare` saves")


# ---- usage errors: exit 2, one line -------------------------------------------------------


@pytest.mark.parametrize(("argv", "expected"), [
    (["compare", "--eval-samples", "-3"], "argument --eval-samples: must be a positive whole number, got '-3'"),
    (["compare", "--batch-size", "many"], "argument --batch-size: must be a positive whole number, got 'many'"),
    (["explain", "x.pt", "--max-mb", "0"], "argument --max-mb: must be a positive number of MiB, got 0"),
    (["runs", "purge"], "argument action: invalid choice: 'purge' (choose from "),
    (["calibrate"], "argument COMMAND: invalid choice: 'calibrate'"),
])
def test_cli_usage_errors_exit_2_with_one_line_naming_the_argument(capsys, argv, expected):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"qcal: error: {expected}"), err


def test_cli_bench_batches_must_be_whole_numbers(capsys):
    assert cli_error(["bench", "--batches", "8,x"], capsys) == (
        "--batches must be a comma list of positive whole numbers, got '8,x'")


# ---- checkpoints through `qcal explain` ---------------------------------------------------


def test_cli_explain_refuses_garbage_a_pickle_and_an_fp32_state_dict(tmp_path, capsys):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"garbage" * 10)
    assert cli_error(["explain", str(garbage)], capsys) == (
        "garbage.pt is not a torch checkpoint (neither a torch.save zip archive nor a pickle)")
    evil = tmp_path / "evil.pt"
    evil.write_bytes(b"cos\nsystem\n(S'echo hi'\ntR.")  # a protocol-0 pickle calling os.system
    assert cli_error(["explain", str(evil)], capsys).startswith(
        "refusing evil.pt: it holds pickled Python objects, not only tensors (it references os.system)")
    fp32 = tmp_path / "fp32.pt"
    torch.save(nn.Linear(2, 2).state_dict(), fp32)
    assert cli_error(["explain", str(fp32)], capsys).startswith(
        "no quantized tensors found: this looks like an fp32 state_dict")
    assert cli_error(["explain", str(fp32), "--max-mb", "0.0001"], capsys).startswith(
        "fp32.pt is ")  # ... above the limit of ...


def test_cli_an_unexpected_exception_is_still_one_line(monkeypatch, capsys):
    import qcal.cli.runs

    def broken(*args, **kwargs):
        raise RuntimeError("something\nwent wrong")

    monkeypatch.setattr(qcal.cli.runs, "_table", broken)
    monkeypatch.delenv("QCAL_DEBUG", raising=False)
    message = cli_error(["compare", "--list-models"], capsys)
    assert message == "unexpected RuntimeError: something went wrong (set QCAL_DEBUG=1 to see the traceback)"


# ---- Python API cases not covered elsewhere ----------------------------------------------


def test_an_op_the_graph_cannot_run_falls_back_to_module_swap_naming_the_op():
    from qcal import calibrate

    model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 4)).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qm = calibrate(model, torch.randn(16, 8), "per_tensor_affine")
    fallback = [str(w.message) for w in caught if "module-swap" in str(w.message)]
    assert len(fallback) == 1 and "LayerNorm" in fallback[0], fallback
    assert qm.mode == "modules"
    assert qm(torch.randn(2, 8)).shape == (2, 4)


def test_compare_eval_inputs_of_the_wrong_shape_name_the_shape():
    from qcal import compare

    model = nn.Sequential(nn.Linear(8, 4)).eval()
    with pytest.raises(ValueError, match=r"eval batch of shape \(5, 7\) does not fit the model: "):
        compare(model, torch.randn(8, 8), [(torch.randn(5, 7), None)], ["per_tensor_affine"])


def test_a_factory_that_raises_is_reported_with_its_spec(user):
    from qcal.io.user_models import load_user_model

    with pytest.raises(ValueError, match=r"'errors_user_models:crashes': calling crashes\(\) failed with RuntimeError"):
        load_user_model("errors_user_models:crashes")


def test_constant_tensors_get_torchs_qparams_and_only_all_zero_gets_eps():
    from torch.ao.quantization import MinMaxObserver

    from qcal import QSpec, make_observer

    for value in (0.0, 3.0, -0.5):
        ours = make_observer(QSpec("quint8", "per_tensor_affine", "minmax"))
        theirs = MinMaxObserver(dtype=torch.quint8)
        x = torch.full((4, 4), value)
        ours.update(x)
        theirs(x)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            s, z = ours.qparams()
        ts, tz = theirs.calculate_qparams()
        assert s.tolist() == ts.tolist() and z.tolist() == tz.tolist()
        eps_warnings = [w for w in caught if "only zeros" in str(w.message)]
        assert (s.item() == torch.finfo(torch.float32).eps) == (value == 0.0) == bool(eps_warnings)
