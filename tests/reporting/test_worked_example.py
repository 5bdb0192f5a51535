"""The Requant page's worked element: hand-worked numbers, qcal's engine and torch's engines."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from qcal.calibration.model import QuantLayer
from qcal.reporting import worked_example as we


def _linear_layer(w: list[list[int]], *, sa=0.5, za=0, sw=0.25, so=1.0, zo=3, bias=None, relu=False):
    w_q = torch.tensor(w, dtype=torch.int8)
    return QuantLayer(
        name="fc", kind="linear", weight_q=w_q, weight_scale=torch.tensor([sw]),
        weight_zero_point=torch.tensor([0]), weight_qscheme="per_tensor_symmetric",
        weight_min=torch.zeros(w_q.shape[0]), weight_max=torch.zeros(w_q.shape[0]), bias=bias,
        input_scale=sa, input_zero_point=za, output_scale=so, output_zero_point=zo, relu=relu,
    )


def _trace(acc: int):
    return SimpleNamespace(acc=torch.tensor([[acc]], dtype=torch.int32),
                           output_q=torch.zeros(1, 1, dtype=torch.uint8))


def test_fbgemm_adds_the_zero_point_after_rounding_and_onnx_before():
    # the worked number of qcal.int8.common.requant's docstring: M = 0.5 * 0.25 / 1.0 = 0.125; acc 20 -> 2.5
    layer = _linear_layer([[1]])
    fbgemm = we.requant_steps(layer, _trace(20), (0, 0), "fbgemm")
    onnx = we.requant_steps(layer, _trace(20), (0, 0), "onnx")
    assert fbgemm["value"].iloc[-1] == "5"  # rint(2.5) = 2 (half to even), + 3
    assert onnx["value"].iloc[-1] == "6"  # rint(2.5 + 3) = rint(5.5) = 6
    assert list(fbgemm["step"])[-3:] == ["round half to even", "add output zero point", "clamp"]


def test_x86_steps_follow_onednn_for_symmetric_convs_on_avx512_vnni(monkeypatch):
    # acc 20, S = 0.125: oneDNN adds zo before rounding (6), FBGEMM after (5)
    conv = dataclasses.replace(_linear_layer([[1]]), kind="conv", weight_q=torch.ones(1, 1, 1, 1, dtype=torch.int8))
    trace = SimpleNamespace(acc=torch.tensor([[[[20]]]], dtype=torch.int32),
                            output_q=torch.zeros(1, 1, 1, 1, dtype=torch.uint8))
    monkeypatch.setenv("QCAL_CPU", "avx512_vnni")
    steps = we.requant_steps(conv, trace, (0, 0, 0, 0), "x86")
    assert steps["value"].iloc[-1] == "6" and "add output zero point first" in set(steps["step"])
    monkeypatch.setenv("QCAL_CPU", "avx2")
    assert we.requant_steps(conv, trace, (0, 0, 0, 0), "x86")["value"].iloc[-1] == "5"


def test_clamp_step_applies_the_fused_relu_at_the_output_zero_point():
    layer = _linear_layer([[1]], relu=True)
    steps = we.requant_steps(layer, _trace(-400), (0, 0), "qnnpack")
    assert steps["value"].iloc[-1] == "3"  # -50 + 3 clamps up to zo = 3


def test_q31_steps_round_half_away_from_zero():
    layer = _linear_layer([[1]], zo=0)
    steps = we.requant_steps(layer, _trace(20), (0, 0), "q31")  # 20 * 0.125 = 2.5 -> 3
    assert steps["value"].iloc[-1] == "3"
    assert "q = 1073741824, shift = -2" in set(steps["value"])  # 0.125 = 2^30 * 2^(-2-31)


def test_requant_table_holds_each_backends_multiplier_and_the_real_requant_scale():
    layer = _linear_layer([[1], [2]], sa=0.1, sw=0.3, so=0.7)
    table = we.requant_table(layer)
    assert table["requant_scale"].tolist() == pytest.approx([0.1 * 0.3 / 0.7] * 2)
    f32 = torch.tensor(0.1, dtype=torch.float32) * torch.tensor(0.3, dtype=torch.float32)
    assert table["fbgemm_multiplier"].iloc[0] == float(f32 / torch.tensor(0.7, dtype=torch.float32))
    assert table["qnnpack_multiplier"].iloc[0] == float(f32 * (1.0 / torch.tensor(0.7, dtype=torch.float32)))


def test_pair_saturation_finds_the_pairs_that_overflow_int16_at_full_range():
    # weights 127, 127 and codes near the top: two products of ~127*255 overflow int16
    layer = _linear_layer([[127, 127, -3, 2]], sa=1.0 / 127, za=0)
    codes = torch.tensor([[127, 127, 10, 10]], dtype=torch.uint8)  # reduce_range codes
    trace = SimpleNamespace(input_q=codes)
    pairs, summary = we.pair_saturation(layer, trace, (0, 0), reduce_range=True)
    assert pairs["sum_calibrated"].tolist() == [127 * 127 * 2, -10]  # <= 32512: safe
    assert pairs["saturates_full_range"].tolist() == [True, False]  # codes 254/255 overflow
    assert summary["layer_saturated_calibrated"] == 0 and summary["layer_saturated_full_range"] == 1
    assert summary["element_pairs_can_saturate"] == 1


@pytest.fixture(scope="module")
def traced():
    import qcal
    from qcal.reporting import views

    x = views.zoo_eval_inputs("digits_cnn", 2)
    out = {}
    for scheme in ("per_tensor_affine", "per_channel_symmetric"):
        qm = views.calibrate_zoo("digits_cnn", scheme, "fbgemm")
        for backend in qcal.int8.BACKENDS:
            q = qm.with_backend(backend)
            out[(scheme, backend)] = (q, q.trace(x))
    return out


@pytest.mark.parametrize("backend", ["fbgemm", "qnnpack", "onnx", "q31", "x86", "ort", "xnnpack"])
def test_worked_steps_end_on_the_engines_output_and_torchs(traced, backend):
    g = torch.Generator().manual_seed(0)
    for (_, b), (qm, traces) in traced.items():
        if b != backend:
            continue
        for name, layer in qm.quant_layers.items():
            tr = traces[name]
            channels, rows, cols = we.element_grid(tuple(tr.output_q.shape), layer.kind)
            for _ in range(8):
                c, r, k = (int(torch.randint(0, n, (1,), generator=g)) for n in (channels, rows, cols))
                index = we.element_index(tuple(tr.output_q.shape), layer.kind, c, r, k, sample=1)
                worked = int(we.requant_steps(layer, tr, index, backend)["value"].iloc[-1])
                assert worked == int(tr.output_q[index]), (name, index)
                reference = we.backend_reference_element(layer, tr, index, backend)
                assert reference is None if backend in ("onnx", "q31", "ort", "xnnpack") else reference == worked


def test_element_index_rejects_an_element_outside_the_output():
    with pytest.raises(ValueError, match="outside the output"):
        we.element_index((1, 4, 3, 3), "conv", channel=4)
    assert we.element_index((1, 8, 32), "linear", channel=5, row=7) == (0, 7, 5)


def test_element_report_gathers_the_pages_numbers_and_agrees_with_torch(traced):
    qm, traces = traced[("per_channel_symmetric", "fbgemm")]
    name = next(iter(qm.quant_layers))
    layer, tr = qm.quant_layers[name], traces[name]
    index = we.element_index(tuple(tr.output_q.shape), layer.kind, 1, 2, 3, sample=1)
    report = we.element_report(qm, name, tr, index, "fbgemm")
    assert report.agrees and report.worked == report.engine == report.reference == int(tr.output_q[index])
    assert report.verdict.startswith("The worked steps, qcal's engine and the real backend agree")
    assert report.channel == 1 and report.channel_numbers == report.table.iloc[1].to_dict()
    assert report.steps.equals(we.requant_steps(layer, tr, index, "fbgemm"))
    assert report.requant == we.channel_requant(layer, "fbgemm", 1)
    assert report.reduce_range == qm.scheme.activation.reduce_range
    pairs, saturation = we.pair_saturation(layer, tr, index, reduce_range=report.reduce_range)
    assert report.pairs.equals(pairs) and report.saturation == saturation


def test_element_report_names_a_disagreement_with_the_values_seen():
    layer = _linear_layer([[1]])
    qm = SimpleNamespace(quant_layers={"fc": layer},
                         scheme=SimpleNamespace(activation=SimpleNamespace(reduce_range=True)))
    trace = SimpleNamespace(acc=torch.tensor([[20]], dtype=torch.int32), input_q=torch.tensor([[10]], dtype=torch.uint8),
                            output_q=torch.tensor([[7]], dtype=torch.uint8))  # onnx works out 6
    report = we.element_report(qm, "fc", trace, (0, 0), "onnx")
    assert (report.worked, report.engine, report.reference, report.agrees) == (6, 7, None, False)
    assert "differ on onnx (worked 6, qcal engine 7)" in report.verdict
    assert "docs/requant.md" in report.verdict
