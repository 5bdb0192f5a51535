"""Built schemes through the CLI, the run store and the report."""

from __future__ import annotations

import pytest
from test_errors import cli_error, user  # noqa: F401  (fixture)

from qcal.cli.main import main
from qcal.scheme_text import parse_scheme, run_schemes
from qcal.store import Store

BUILT = "name=p999;w=per_channel_symmetric/minmax;a=per_tensor_affine/percentile:99.9/bins=256"


def test_cli_compares_a_built_scheme_beside_a_preset_and_saves_its_definition(user, tmp_path, capsys):  # noqa: F811
    store = tmp_path / "runs.sqlite"
    code = main(["compare", "--model", "errors_user_models:net", "--data", user("d.pt"),
                 "--calib-samples", "8", "--schemes", "per_tensor_affine", "--scheme", BUILT,
                 "--store", str(store), "--format", "csv"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert [line.split(",")[0] for line in captured.out.splitlines()[1:]] == ["per_tensor_affine", "p999"]
    run_id = Store(store).list()["id"].iloc[0]
    run = Store(store).load(run_id)
    assert run_schemes(run.meta) == {"per_tensor_affine": parse_scheme("per_tensor_affine"),
                                     "p999": parse_scheme(BUILT)}
    report = tmp_path / "r.html"
    assert main(["report", run_id, "-o", str(report), "--store", str(store)]) == 0
    assert "a=per_tensor_affine/percentile:99.9/bins=256" in report.read_text()


@pytest.mark.parametrize(("text", "expected"), [
    ("w=per_channel_symmetric/minmax", "scheme text 'w=per_channel_symmetric/minmax': missing field a="),
    ("w=per_channel_symmetric/minmax;a=per_tensor_affine/percentile:200",
     "scheme text: bad activation percentile p '200'; accepted: a number in (50, 100]"),
    ("w=per_channel_symmetric/minmax;a=per_tensor_affine/minmax/dtype=qint8",
     "cannot run on fbgemm: qint8 activations: fbgemm's kernels take quint8 activations only"),
])
def test_cli_a_bad_scheme_text_is_one_line_naming_the_field(user, capsys, text, expected):  # noqa: F811
    message = cli_error(["compare", "--model", "errors_user_models:net", "--data", user("d.pt"),
                         "--scheme", text, "--no-save"], capsys)
    assert expected in message


def test_cli_a_built_scheme_may_not_take_a_presets_name(capsys):
    text = "name=per_tensor_affine;w=per_channel_symmetric/minmax;a=per_tensor_affine/minmax"
    assert "bad name 'per_tensor_affine'" in cli_error(["compare", "--scheme", text, "--no-save"], capsys)
