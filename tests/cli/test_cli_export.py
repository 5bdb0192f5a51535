"""``python -m qcal export``: writes an ONNX file onnxruntime runs, and --verify counts differences."""

from __future__ import annotations

import onnx
import pytest

from qcal.cli.main import main


def test_export_verify_prints_zero_differences(tmp_path, capsys):
    out = tmp_path / "mlp.onnx"
    status = main(["export", "--model", "digits_mlp", "--scheme", "qnnpack_default", "-o", str(out),
                   "--verify", "--eval-samples", "32"])
    text = capsys.readouterr().out
    assert status == 0, text
    onnx.checker.check_model(onnx.load(out), full_check=True)
    assert "verify: 0 differing values of 320 (32 samples" in text


@pytest.mark.parametrize(("flag", "value"), [("--model", "nope"), ("--scheme", "nope")])
def test_export_names_a_bad_choice(tmp_path, capsys, flag, value):
    args = {"--model": "digits_mlp", "--scheme": "per_tensor_affine", flag: value}
    status = main(["export", *[t for kv in args.items() for t in kv], "-o", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert status == 1 and f"unknown {flag[2:]} 'nope'" in err
    assert not (tmp_path / "m.onnx").exists()
