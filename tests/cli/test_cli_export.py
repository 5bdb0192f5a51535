"""``python -m qcal export``: writes an ONNX file onnxruntime runs, and --verify counts differences."""

from __future__ import annotations

import onnx
import pytest

from qcal.cli.main import main
from qcal.int8.backends.ort import ort_saturates
from qcal.io.recipe_files import write_recipe
from qcal.recipes import Recipe


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


def test_export_recipe_with_fp32_layers(tmp_path, capsys):
    """A recipe keeping fc2 in fp32: a valid file, a note that onnxruntime quantizes that layer
    itself, and qcal's prediction of it exact."""
    recipe = write_recipe(Recipe("fbgemm_default", {"fc2": None}, name="fc2 fp32"), tmp_path / "r.toml")
    out = tmp_path / "mlp.onnx"
    status = main(["export", "--model", "digits_mlp", "--recipe", str(recipe), "-o", str(out),
                   "--verify", "--eval-samples", "32"])
    text = capsys.readouterr().out
    assert status == 0, text
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node].count("Gemm") == 3  # fc2 written as a float Gemm
    assert "note: onnxruntime quantizes the fp32 layers fc2 itself" in text
    assert "verify: 0 differing values of 320" in text


def test_export_verify_predicts_another_cpu(tmp_path, capsys, monkeypatch):
    """--cpu: qcal predicts onnxruntime on that CPU. qnnpack_default's full-range activations
    saturate MLAS's int16 pairs where its U8S8 kernels pair them (AVX2, AVX-512 without VNNI)
    and not where they do not (VNNI, AMX): the prediction for a CPU of this machine's kind is
    exact, the one for the other kind differs from what this machine runs."""
    monkeypatch.delenv("QCAL_CPU", raising=False)
    monkeypatch.delenv("QCAL_ORT_CPU", raising=False)
    same, other = ("avx2", "avx512_vnni") if ort_saturates() else ("avx512_vnni", "avx2")
    out = tmp_path / "mlp.onnx"
    base = ["export", "--model", "digits_mlp", "--scheme", "qnnpack_default", "-o", str(out), "--verify",
            "--eval-samples", "32"]
    assert main([*base, "--cpu", same]) == 0
    assert "verify: 0 differing values of 320 (32 samples; onnxruntime" in capsys.readouterr().out
    status = main([*base, "--cpu", other])
    captured = capsys.readouterr()
    named = {"avx2": "AVX2 (no VNNI)", "avx512_vnni": "AVX512-VNNI"}[other]
    assert status == 1 and f"{named})" in captured.out
    assert "verify: 0 differing" not in captured.out
    assert f"prediction made for {named} (--cpu)" in captured.err


@pytest.mark.parametrize("scheme", ["per_channel_symmetric", "qnnpack_default"])
def test_the_cli_and_the_dashboard_download_write_the_same_file(tmp_path, capsys, scheme):
    """The Compare page's download (views.zoo_onnx_bytes) and `qcal export` are one file, byte for byte."""
    from qcal.reporting.views import zoo_onnx_bytes

    out = tmp_path / "mlp.onnx"
    assert main(["export", "--model", "digits_mlp", "--scheme", scheme, "-o", str(out)]) == 0, \
        capsys.readouterr().err
    assert out.read_bytes() == zoo_onnx_bytes("digits_mlp", scheme)


def test_export_calibrates_with_the_stored_runs_batches(tmp_path):
    """A moving-average observer depends on how the calibration data is batched: the CLI's
    export_zoo and the page's download must batch it alike (they once used 64 vs 128)."""
    from qcal.export.verify import export_zoo
    from qcal.reporting.views import zoo_onnx_bytes
    from qcal.scheme_text import parse_scheme
    from qcal.zoo.datasets import ZOO_BATCH, digits_splits

    assert len(digits_splits().calib[0]) > ZOO_BATCH  # more than one batch, or batching cannot matter
    scheme = parse_scheme("name=ma;w=per_channel_symmetric/minmax;a=per_tensor_affine/moving_average")
    _, path = export_zoo("digits_mlp", scheme, tmp_path / "ma.onnx")
    assert path.read_bytes() == zoo_onnx_bytes("digits_mlp", scheme)
