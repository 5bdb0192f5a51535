"""qcal.explain on state dicts written by torch's own eager and FX conversion.

Oracles: the converted modules themselves (``module.weight().q_per_channel_scales()``,
``module.scale``, the FX graph's quantize nodes), never qcal's own inference.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import qcal
from qcal.checkpoint.explain import COLUMNS, ROLES, explain, explain_bytes
from qcal.cli.explain import short_list
from qcal.cli.main import main

qa = torch.ao.quantization
# torch attributes its deprecation warning to the caller, so pyproject's torch.ao.* filter misses it
pytestmark = pytest.mark.filterwarnings(
    "ignore:torch.ao.quantization is deprecated:DeprecationWarning"
)
from torch.ao.quantization.quantize_fx import (  # noqa: E402
    convert_fx,
    convert_to_reference_fx,
    prepare_fx,
)


class Net(nn.Module):
    """The layer names of users' questions; QuantStub only in eager mode."""

    def __init__(self, eager: bool) -> None:
        super().__init__()
        self.eager = eager
        self.quant = qa.QuantStub()
        self.conv_3x3_32a = nn.Conv2d(1, 8, 3)  # (B, 1, 8, 8) -> (B, 8, 6, 6)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 4, 3)  # -> (B, 4, 4, 4)
        self.fc = nn.Linear(4 * 4 * 4, 5)
        self.dequant = qa.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.eager:
            x = self.quant(x)
        x = self.conv2(self.relu(self.conv_3x3_32a(x)))
        x = self.fc(x.flatten(1))
        return self.dequant(x) if self.eager else x


def _qconfig(backend: str, weights: str) -> qa.QConfig:
    default = qa.get_default_qconfig(backend)
    weight = {
        "per_channel": qa.default_per_channel_weight_observer,
        "per_tensor": qa.default_weight_observer,
    }
    return qa.QConfig(activation=default.activation, weight=weight[weights])


@functools.cache
def converted(mode: str, backend: str, weights: str) -> nn.Module:
    """torch's own conversion of Net (cached: each combination is built once per session)."""
    torch.manual_seed(0)
    x = torch.randn(16, 1, 8, 8)
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = backend
    try:
        qconfig = _qconfig(backend, weights)
        if mode == "eager":
            model = Net(eager=True).eval()
            model.qconfig = qconfig
            prepared = qa.prepare(model)
            prepared(x)
            return qa.convert(prepared)
        prepared = prepare_fx(
            Net(eager=False).eval(), qa.QConfigMapping().set_global(qconfig), (x,)
        )
        prepared(x)
        return convert_fx(prepared)
    finally:
        torch.backends.quantized.engine = previous


def _module_input_qparams(model: nn.Module, mode: str, name: str) -> tuple[float, int]:
    """The (scale, zero point) the layer `name` reads, from the converted model itself."""
    if mode == "eager":
        producer = {"conv_3x3_32a": "quant", "conv2": "conv_3x3_32a", "fc": "conv2"}[name]
        m = getattr(model, producer)
        return float(m.scale), int(m.zero_point)
    node = next(n for n in model.graph.nodes if n.op == "call_module" and n.target == name)
    src = node.args[0]
    while True:
        if src.op == "call_function" and src.target is torch.quantize_per_tensor:
            scale, zp = (getattr(model, a.target) for a in src.args[1:3])
            return float(scale), int(zp)
        if src.op == "call_module":
            m = model.get_submodule(src.target)
            return float(m.scale), int(m.zero_point)
        src = src.args[0]  # flatten / relu / dequantize: pass-through in the graph


def _weight(model: nn.Module, name: str) -> torch.Tensor:
    return model.get_submodule(name).weight()


def _scales(w: torch.Tensor) -> list[float]:
    if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        return w.q_per_channel_scales().tolist()
    return [w.q_scale()]


def _row(df, key: str):
    rows = df[df.key == key]
    assert len(rows) == 1, f"{key!r} not found once in {df.key.tolist()}"
    return rows.iloc[0]


CASES = [
    (m, b, w)
    for m in ("eager", "fx")
    for b in ("fbgemm", "qnnpack")
    for w in ("per_channel", "per_tensor")
]


@pytest.mark.parametrize(("mode", "backend", "weights"), CASES)
def test_roles_and_requant_scales_match_the_converted_modules(mode, backend, weights):
    model = converted(mode, backend, weights)
    df = explain(model.state_dict())
    assert list(df.columns) == COLUMNS
    assert set(df.role) <= set(ROLES)
    sd = model.state_dict()
    assert set(sd) <= set(df.key), "one row per state-dict entry"
    expected_roles = {
        "conv_3x3_32a.weight": "weight",
        "conv_3x3_32a.bias": "bias",
        "conv_3x3_32a.scale": "output scale",
        "conv_3x3_32a.zero_point": "output zero point",
        "fc._packed_params._packed_params": "packed params",
        "fc.scale": "output scale",
    }
    if mode == "eager":
        expected_roles |= {"quant.scale": "input scale", "quant.zero_point": "input zero point"}
    else:
        expected_roles |= {
            "conv_3x3_32a_input_scale_0": "input scale",
            "conv_3x3_32a_input_zero_point_0": "input zero point",
        }
    for key, role in expected_roles.items():
        assert _row(df, key).role == role, key

    for name in ("conv_3x3_32a", "conv2", "fc"):
        w = _weight(model, name)
        weight_key = "fc._packed_params._packed_params" if name == "fc" else f"{name}.weight"
        np.testing.assert_allclose(_row(df, weight_key).scale, _scales(w), rtol=1e-12)
        assert _row(df, weight_key).qscheme == str(w.qscheme()).removeprefix("torch.")
        out_scale = float(model.get_submodule(name).scale)
        in_scale, in_zp = _module_input_qparams(model, mode, name)
        requant = _row(df, name)
        assert requant.role == "requant"
        expected = [in_scale * s / out_scale for s in _scales(w)]
        np.testing.assert_allclose(requant.requant_scale, expected, rtol=1e-6)
        assert f"(x_q − {in_zp})" in requant.note


@pytest.mark.parametrize("backend", ["fbgemm", "qnnpack"])
def test_fx_reference_model_requant_scales_match_its_graph(backend):
    torch.backends.quantized.engine = backend
    x = torch.randn(16, 1, 8, 8)
    prepared = prepare_fx(Net(eager=False).eval(), qa.get_default_qconfig_mapping(backend), (x,))
    prepared(x)
    ref = convert_to_reference_fx(prepared)
    df = explain(ref.state_dict())
    nodes = {n.target: n for n in ref.graph.nodes if n.op == "call_module"}
    for name in ("conv_3x3_32a", "conv2", "fc"):
        # a fused ConvReLU wraps the conv as `<name>.0`
        layer = f"{name}.0" if _row_exists(df, f"{name}.0") else name
        weight = ref.get_submodule(layer)
        q_in = nodes[name].args[0].args[0]  # call_module(dequantize(quantize_per_tensor(x, s, z)))
        q_out = next(iter(nodes[name].users))  # quantize_per_tensor(module(x), s, z)
        s_in, z_in = (getattr(ref, a.target) for a in q_in.args[1:3])
        s_out = getattr(ref, q_out.args[1].target)
        expected = [float(s_in) * s / float(s_out) for s in weight.weight_scale.tolist()]
        requant = _row(df, layer)
        np.testing.assert_allclose(requant.requant_scale, expected, rtol=1e-6)
        assert f"(x_q − {int(z_in)})" in requant.note
        assert _row(df, f"{layer}.weight_scale").role == "weight scale"


def _row_exists(df, key: str) -> bool:
    return bool((df.key == key).any())


def test_fx_state_dict_lists_the_input_quantizer_and_graph_requantize_buffers():
    sd = converted("fx", "fbgemm", "per_channel").state_dict()
    # torch 2.13 names FX quantizers `<first consumer>_input_scale_<n>` and `<scope>_scale_<n>`
    assert {
        "conv_3x3_32a_input_scale_0",
        "conv_3x3_32a_input_zero_point_0",
        "_scale_0",
        "_zero_point_0",
    } <= set(sd)
    df = explain(sd)
    assert _row(df, "_scale_0").role == "output scale"
    assert "FX graph op" in _row(df, "_scale_0").note


def test_per_channel_symmetric_qint8_weights_point_to_fbgemm_default():
    df = explain(converted("eager", "fbgemm", "per_channel").state_dict())
    row = _row(df, "conv_3x3_32a.weight")
    assert row.likely_scheme == "fbgemm_default"
    assert "symmetric" in row.note and "full qint8 range" in row.note
    assert "stores it as per_channel_affine" in row.note
    assert all(z == 0 for z in row.zero_point)


def _user_state_dict(
    out_zp: int, *, per_channel: bool, dtype=torch.qint8, w_zp: int = 0, codes=None
):
    """The shape of users' questions: quant stub, conv.weight, conv.bias, conv.scale/zero_point."""
    torch.manual_seed(1)
    w = torch.randn(4, 1, 3, 3) * 0.2
    if per_channel:
        scales = torch.tensor([0.00367, 0.0031, 0.0029, 0.0040], dtype=torch.float64)
        zps = torch.full((4,), w_zp, dtype=torch.int64)
        qw = torch.quantize_per_channel(w, scales, zps, 0, dtype)
    else:
        qw = torch.quantize_per_tensor(w, 0.00367, w_zp, dtype)
    if codes is not None:  # force exact integer codes
        qw = torch._make_per_tensor_quantized_tensor(codes.to(torch.int8), 0.00367, 0)
    return {
        "quant.scale": torch.tensor([0.0078]),
        "quant.zero_point": torch.tensor([128]),
        "conv.weight": qw,
        "conv.bias": torch.zeros(4),
        "conv.scale": torch.tensor(0.0031),
        "conv.zero_point": torch.tensor(out_zp),
    }


def test_users_question_output_scale_is_the_layers_output_quantization():
    df = explain(_user_state_dict(160, per_channel=False))
    assert _row(df, "conv.weight").role == "weight"
    assert _row(df, "conv.scale").role == "output scale"
    assert "OUTPUT quantization" in _row(df, "conv.scale").note
    note = _row(df, "conv.zero_point").note
    assert "160 > 127" in note and "cannot produce" in note and "full range" in note
    requant = _row(df, "conv")
    np.testing.assert_allclose(requant.requant_scale, [0.0078 * 0.00367 / 0.0031], rtol=1e-6)
    assert "after the int32 accumulation" in requant.note
    assert requant.likely_scheme == "qnnpack_default"


def test_a_quant_stub_registered_after_the_layers_feeds_the_first_layer():
    sd = _user_state_dict(160, per_channel=False)
    moved = {k: v for k, v in sd.items() if not k.startswith("quant.")} | {
        "quant.scale": sd["quant.scale"],
        "quant.zero_point": sd["quant.zero_point"],
    }  # torchvision's quantizable models register quant/dequant last
    requant = _row(explain(moved), "conv")
    np.testing.assert_allclose(requant.requant_scale, [0.0078 * 0.00367 / 0.0031], rtol=1e-6)
    assert "only QuantStub" in requant.note


def test_per_tensor_symmetric_weights_without_full_range_evidence_say_per_tensor_symmetric():
    df = explain(_user_state_dict(60, per_channel=False) | {"quant.zero_point": torch.tensor([60])})
    row = _row(df, "conv.weight")
    assert row.likely_scheme == "per_tensor_symmetric"
    assert "qnnpack_default if" in row.note


def test_weight_zero_points_that_vary_are_affine():
    sd = _user_state_dict(60, per_channel=True)
    w = torch.randn(4, 1, 3, 3) * 0.2
    sd["conv.weight"] = torch.quantize_per_channel(w, torch.full((4,), 0.003, dtype=torch.float64),
                                                   torch.tensor([0, 3, -2, 5]), 0, torch.qint8)  # fmt: skip
    row = _row(explain(sd), "conv.weight")
    assert row.likely_scheme == "per_channel_affine"
    assert "zero points vary" in row.note.lower()


def test_quint8_weights_with_zero_point_128_are_symmetric():
    sd = _user_state_dict(60, per_channel=False, dtype=torch.quint8, w_zp=128)
    row = _row(explain(sd), "conv.weight")
    assert "every zero point is 128" in row.note.lower()
    assert row["dtype"] == "quint8"


def test_reduce_range_weight_codes_are_recognised():
    codes = torch.randint(-64, 64, (4, 1, 3, 3))
    codes[0, 0, 0, 0] = -64
    row = _row(explain(_user_state_dict(60, per_channel=False, codes=codes)), "conv.weight")
    assert "reduce_range" in row.note and "<= 64" in row.note


def test_input_after_an_add_is_reported_as_ambiguous_not_guessed():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.dequant = qa.QuantStub(), qa.DeQuantStub()
            self.conv_a, self.conv_b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
            self.skip_add = nn.quantized.FloatFunctional()
            self.conv_c = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            a = self.conv_a(self.quant(x))
            return self.dequant(self.conv_c(self.skip_add.add(a, self.conv_b(a))))

    torch.backends.quantized.engine = "fbgemm"
    model = Residual().eval()
    model.qconfig = qa.get_default_qconfig("fbgemm")
    prepared = qa.prepare(model)
    prepared(torch.randn(4, 1, 6, 6))
    df = explain(qa.convert(prepared).state_dict())
    assert _row(df, "skip_add.scale").role == "output scale"
    requant_c = _row(df, "conv_c")
    assert requant_c.requant_scale == []
    assert "cannot say" in requant_c.note and "skip_add" in requant_c.note
    assert len(_row(df, "conv_b").requant_scale) == 4  # conv_b reads conv_a: inferred


def test_fx_add_makes_the_next_input_ambiguous_but_siblings_in_a_sequential_are_inferred():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv_a = nn.Conv2d(1, 4, 3, padding=1)
            self.conv_b = nn.Conv2d(4, 4, 3, padding=1)
            self.head = nn.Sequential(nn.Conv2d(4, 6, 1), nn.Conv2d(6, 5, 1))

        def forward(self, x):
            a = self.conv_a(x)
            return self.head(a + self.conv_b(a))

    torch.backends.quantized.engine = "fbgemm"
    x = torch.randn(4, 1, 6, 6)
    prepared = prepare_fx(Residual().eval(), qa.get_default_qconfig_mapping("fbgemm"), (x,))
    prepared(x)
    gm = convert_fx(prepared)
    df = explain(gm.state_dict())
    assert _row(df, "_scale_0").layer == "<root>:q0"  # the add's output quantizer
    assert _row(df, "head.0").requant_scale == []
    assert "the graph, not the state dict" in _row(df, "head.0").note
    in_scale, _ = _module_input_qparams(gm, "fx", "head.1")
    w = _weight(gm, "head.1")
    expected = [in_scale * s / float(gm.get_submodule("head.1").scale) for s in _scales(w)]
    np.testing.assert_allclose(_row(df, "head.1").requant_scale, expected, rtol=1e-6)


def test_dynamic_quantization_has_no_requant_scale():
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    df = explain(qa.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8).state_dict())
    for layer in ("0", "2"):
        assert _row(df, layer).requant_scale == []
        assert "dynamically quantized" in _row(df, layer).note
    assert "unused default" in _row(df, "2.scale").note


@pytest.mark.parametrize(
    ("op", "weight_shape", "x_shape"),
    [("linear", (3, 6), (4, 6)), ("conv", (3, 1, 3, 3), (2, 1, 5, 5))],
)
def test_fx_functional_packed_weight_loads_as_data(tmp_path, op, weight_shape, x_shape):
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.w, self.b = nn.Parameter(torch.randn(weight_shape)), nn.Parameter(torch.randn(3))

        def forward(self, x):
            if op == "linear":
                return nn.functional.linear(x, self.w, self.b)
            return nn.functional.conv2d(x, self.w, self.b, [1, 1], [0, 0], [1, 1], 1)

    torch.backends.quantized.engine = "fbgemm"
    x = torch.randn(x_shape)
    prepared = prepare_fx(Functional().eval(), qa.get_default_qconfig_mapping("fbgemm"), (x,))
    prepared(x)
    gm = convert_fx(prepared)
    sd = gm.state_dict()
    assert type(sd["_packed_weight_0"]).__name__ == "ScriptObject"
    path = tmp_path / "functional.pt"
    torch.save(sd, path)
    with pytest.raises(Exception, match="ScriptObject"):
        torch.load(path, weights_only=True)  # why qcal maps ScriptObject to a plain record
    row = _row(explain(path), "_packed_weight_0")
    assert row.role == "packed params" and row.layer == f"F.{op}(_packed_weight_0)"
    weight = gm._packed_weight_0.unpack()[0]
    np.testing.assert_allclose(row.scale, weight.q_per_channel_scales().tolist())
    # the same state dict still in memory gives the same row
    assert _row(explain(sd), "_packed_weight_0").scale == row.scale


def test_a_pickle_that_would_run_code_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    torch.save({"conv.weight": Payload()}, path)
    with pytest.raises(ValueError, match=r"refusing evil\.pt"):
        explain(path)
    assert not marker.exists()


def test_a_whole_pickled_model_is_refused_with_a_state_dict_hint(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(converted("eager", "fbgemm", "per_channel"), path)
    with pytest.raises(ValueError, match=r"save model\.state_dict\(\) instead"):
        explain(path)


def test_a_script_object_of_another_class_is_refused(tmp_path):
    qw = torch.quantize_per_tensor(torch.randn(2, 2), 0.1, 0, torch.qint8)
    real = tmp_path / "real.pt"
    torch.save({"p": torch.ops.quantized.linear_prepack(qw, None)}, real)
    name = b"__torch__.torch.classes.quantized.LinearPackedParamsBase"
    other = b"__torch__.torch.classes.evil.Boom".ljust(
        len(name), b"X"
    )  # same length: no re-pickling
    forged = tmp_path / "forged.pt"
    with zipfile.ZipFile(real) as src, zipfile.ZipFile(forged, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(
                item, data.replace(name, other) if item.filename.endswith("data.pkl") else data
            )
    with pytest.raises(ValueError, match=r"evil\.Boom"):
        explain(forged)


def test_nested_checkpoint_dict_is_searched_and_keys_carry_the_path():
    sd = converted("eager", "fbgemm", "per_channel").state_dict()
    ckpt = {
        "epoch": 3,
        "model_state_dict": sd,
        "optimizer_state_dict": {"state": {}, "param_groups": []},
    }
    df = explain(ckpt)
    assert _row(df, "model_state_dict/conv_3x3_32a.weight").role == "weight"
    assert _row(df, "model_state_dict/conv_3x3_32a").layer == "conv_3x3_32a"
    assert _row(df, "epoch").role == "other"
    assert len(df[df.role == "requant"]) == 3


def test_fp32_state_dict_is_explained_as_such():
    with pytest.raises(
        ValueError, match="no quantized tensors found: this looks like an fp32 state_dict"
    ):
        explain(Net(eager=True).state_dict())


@pytest.mark.parametrize("payload", [torch.ones(3), [torch.ones(3)]], ids=["tensor", "list"])
def test_a_file_that_is_not_a_dict_is_explained(tmp_path, payload):
    path = tmp_path / "thing.pt"
    torch.save(payload, path)
    with pytest.raises(ValueError, match="expected a state_dict"):
        explain(path)


def test_truncated_file_is_explained(tmp_path):
    good = tmp_path / "good.pt"
    torch.save(converted("eager", "qnnpack", "per_tensor").state_dict(), good)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated or damaged"):
        explain(bad)


def test_too_large_file_is_refused_before_loading(tmp_path):
    path = tmp_path / "big.pt"
    torch.save(converted("eager", "qnnpack", "per_tensor").state_dict(), path)
    with pytest.raises(ValueError, match="above the limit of 100 bytes"):
        explain(path, max_bytes=100)


def test_a_compressed_archive_that_expands_past_the_limit_is_refused(tmp_path):
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\0" * (4 * 2**20))
    assert path.stat().st_size < 2**20
    with pytest.raises(ValueError, match=r"expands to 4\.0 MiB, above the limit of 1\.0 MiB"):
        explain(path, max_bytes=2**20)


def test_short_list_shortens_long_lists():
    assert short_list([0.0031, 0.0029] + [0.001] * 38) == "[0.0031, 0.0029, … 40 values]"
    assert short_list([160]) == "[160]"


@pytest.fixture(scope="module")
def example_path(tmp_path_factory):
    old = os.environ.get("QCAL_DATA_DIR")
    os.environ["QCAL_DATA_DIR"] = str(tmp_path_factory.mktemp("data"))
    try:
        yield qcal.checkpoint.explain.example_checkpoint("qnnpack")
    finally:
        if old is None:
            os.environ.pop("QCAL_DATA_DIR")
        else:
            os.environ["QCAL_DATA_DIR"] = old


def test_example_checkpoint_is_generated_once_under_the_data_dir(example_path):
    assert example_path == Path(os.environ["QCAL_DATA_DIR"]) / "example_checkpoint_qnnpack.pt"
    mtime = example_path.stat().st_mtime_ns
    assert qcal.checkpoint.explain.example_checkpoint("qnnpack") == example_path
    assert example_path.stat().st_mtime_ns == mtime
    assert not list(example_path.parent.glob("*.tmp"))
    df = explain(example_path)
    assert (
        _row(df, "conv_3x3_32a.weight").scale and len(_row(df, "conv_3x3_32a").requant_scale) == 1
    )


def test_cli_explain_prints_the_conv_3x3_32a_rows(tmp_path, capsys):
    path = tmp_path / "users.pt"
    torch.save(converted("eager", "qnnpack", "per_tensor").state_dict(), path)
    assert main(["explain", str(path)]) == 0
    out = capsys.readouterr().out
    for key in ("conv_3x3_32a.weight", "conv_3x3_32a.scale", "conv_3x3_32a.zero_point"):
        assert key in out
    assert "OUTPUT quantization" in out
    assert main(["explain", str(path), "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith(",".join(COLUMNS))


def test_cli_error_is_one_line_and_exits_non_zero(tmp_path, capsys):
    assert main(["explain", str(tmp_path / "missing.pt")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("qcal: error: no such file") and err.count("\n") == 1


def test_python_m_qcal_reports_a_truncated_file_without_traceback(tmp_path):
    bad = tmp_path / "cut.pt"
    torch.save({"w": torch.ones(100)}, tmp_path / "whole.pt")
    bad.write_bytes((tmp_path / "whole.pt").read_bytes()[:300])
    proc = subprocess.run(
        [sys.executable, "-m", "qcal", "explain", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert proc.stderr.startswith("qcal: error:") and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_explain_bytes_of_an_upload_equals_explain_of_the_file_and_names_a_bad_one(tmp_path):
    path = qcal.checkpoint.explain.example_checkpoint("qnnpack")
    from_bytes = explain_bytes(path.read_bytes(), "my model (v2).pt")
    assert from_bytes.equals(explain(path))
    with pytest.raises(ValueError, match=r"my_model__v2_\.pt"):  # the user's (sanitised) name
        explain_bytes(b"not a checkpoint", "my model (v2).pt")
    with pytest.raises(ValueError, match=r"big\.pt is 0\.0 MiB, above the limit of 0\.0 MiB"):
        explain_bytes(path.read_bytes(), "big.pt", max_bytes=100)
