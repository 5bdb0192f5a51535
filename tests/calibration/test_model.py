"""QuantizedModel against torch's own FX-converted model: qparams and outputs, bit for bit."""

import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from wholemodel_cases import MATCHING_ENGINE, digits_data, make_model

import qcal
from qcal.analysis.reference import quantized_engine, torch_reference
from qcal.calibration.calibrate import calibrate, calibrate_many
from qcal.int8.cpu.isa import saturates as isa_saturates
from qcal.runnable import PRESET_ENGINES

ISSUE_ARCHS = ["cnn", "mobilenet", "resnet"]


@pytest.fixture(scope="module")
def data():
    return digits_data()


def _torch_outputs(model, calib, scheme, backend, x):
    ref = torch_reference(model, calib, scheme, backend)
    with quantized_engine(backend):
        return ref, ref(x)


def _mismatches(a: torch.Tensor, b: torch.Tensor) -> int:
    assert a.shape == b.shape
    return int((a != b).sum())


@pytest.mark.parametrize("arch", ISSUE_ARCHS)
@pytest.mark.parametrize("scheme", list(MATCHING_ENGINE))
def test_outputs_are_identical_to_torchs_converted_model(arch, scheme, data):
    calib, x = data
    model = make_model(arch)
    backend = MATCHING_ENGINE[scheme]
    qm = calibrate(model, calib, scheme, backend)
    _, expected = _torch_outputs(model, calib, scheme, backend, x)
    assert qm.mode == "graph"
    assert _mismatches(qm(x), expected) == 0


@pytest.mark.slow
@pytest.mark.parametrize("arch", [*ISSUE_ARCHS, "mlp"])
@pytest.mark.parametrize("scheme", list(MATCHING_ENGINE))
@pytest.mark.parametrize("backend", ["fbgemm", "qnnpack", "x86"])
def test_outputs_are_identical_to_torch_on_both_engines(cpu_set, arch, scheme, backend, data):
    calib, x = data
    model = make_model(arch, seed=1)
    qm = calibrate(model, calib, scheme, backend)
    _, expected = _torch_outputs(model, calib, scheme, backend, x)
    assert _mismatches(qm(x), expected) == 0


def test_x86_flavour_matches_torchs_default_engine(cpu_set, data):
    # torch's default engine on x86: FBGEMM throughout without AVX512-VNNI, oneDNN convs with it
    calib, x = data
    model = make_model("mobilenet", seed=2)
    qm = calibrate(model, calib, "fbgemm_default", "fbgemm").with_backend("x86")
    _, expected = _torch_outputs(model, calib, "fbgemm_default", "x86", x)
    assert qm.backend == "x86" and _mismatches(qm(x), expected) == 0


@pytest.mark.parametrize("arch", ISSUE_ARCHS)
def test_qparams_equal_those_stored_in_torchs_converted_model(arch, data):
    calib, _ = data
    model = make_model(arch)
    for scheme in ["fbgemm_default", "per_tensor_affine"]:
        qm = calibrate(model, calib, scheme, "fbgemm")
        ref = torch_reference(model, calib, scheme, "fbgemm")
        modules = dict(ref.named_modules())
        for name, layer in qm.quant_layers.items():
            mod = modules[name]
            w = mod.weight()
            assert float(mod.scale) == layer.output_scale, name
            assert int(mod.zero_point) == layer.output_zero_point, name
            assert torch.equal(w.int_repr(), layer.weight_q), name
            if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                assert torch.equal(w.q_per_channel_scales().float(), layer.weight_scale), name
                assert torch.equal(w.q_per_channel_zero_points(), layer.weight_zero_point), name
            else:
                assert w.q_scale() == float(layer.weight_scale), name
                assert w.q_zero_point() == int(layer.weight_zero_point), name
        # the model input's quantize step
        first = next(iter(qm.quant_layers.values()))
        input_scale = next(v for k, v in ref.named_buffers() if k.endswith("input_scale_0"))
        assert float(input_scale) == first.input_scale


def test_relu6_after_conv_shares_the_conv_output_qparams_as_torch_does(data):
    calib, _x = data
    qm = calibrate(make_model("mobilenet"), calib, "fbgemm_default", "fbgemm")
    steps = {s.name: s for s in qm.graph.steps}
    clamps = [s for s in qm.graph.steps if s.kind == "clamp"]
    assert clamps, "DigitsMobileNet has ReLU6 layers"
    for s in clamps:
        assert s.obs == steps[s.args[0].name].obs
        assert s.clamp == (0.0, 6.0)


def test_qnnpack_flavour_reproduces_torchs_channels_last_clamp_scramble(data):
    # torch 2.13's qnnpack_clamp writes a channels-last input's values in NHWC order into an
    # NCHW tensor; matching torch means doing the same, and doing it only under qnnpack
    from qcal.graph.layouts import torch_layouts

    qm = calibrate(make_model("mobilenet"), data[0], "per_tensor_affine", "qnnpack")
    _, hit = torch_layouts(qm.graph, "qnnpack")
    assert len(hit) == sum(s.kind == "clamp" for s in qm.graph.steps)
    assert torch_layouts(qm.graph, "fbgemm")[1] == frozenset()


def test_with_backend_keeps_qparams_and_matches_torch_on_the_other_engine(data):
    calib, x = data
    model = make_model("resnet")
    qm = calibrate(model, calib, "per_tensor_affine", "fbgemm")
    other = qm.with_backend("qnnpack")
    assert other.backend == "qnnpack" and other.quant_layers is qm.quant_layers
    _, expected = _torch_outputs(model, calib, "per_tensor_affine", "qnnpack", x)
    assert _mismatches(other(x), expected) == 0
    with pytest.raises(ValueError, match="fbgemm"):
        qm.with_backend("tpu")


def test_trace_records_int8_tensors_and_the_fp32_reference_per_layer(data):
    calib, x = data
    qm = calibrate(make_model("cnn"), calib, "fbgemm_default", "fbgemm")
    traces = qm.trace(x[:8])
    assert list(traces) == list(qm.quant_layers)
    last = traces["fc2"]
    assert torch.equal(last.dequantized, qm(x[:8]))
    for name, t in traces.items():
        assert isinstance(t, qcal.LayerTrace)
        assert t.input_q.dtype == torch.uint8 and t.output_q.dtype == torch.uint8
        assert t.acc.dtype == torch.int32 and t.acc.shape == t.output_q.shape
        assert t.fp32.shape == t.output_q.shape
        cos = torch.nn.functional.cosine_similarity(t.fp32.flatten(), t.dequantized.flatten(), dim=0)
        assert cos > 0.98, name
        # the accumulator is sum (a - za)(w - zw): check one output element by hand
        if t.kind == "linear":
            a = t.input_q[0].long() - t.input_zero_point
            w = t.weight_q[0].long() - t.weight_zero_point[0]
            assert int(t.acc[0, 0]) == int((a * w).sum())
    with pytest.raises(dataclasses_frozen_error()):
        last.name = "other"


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_plain_calls_record_no_trace(data):
    calib, x = data
    qm = calibrate(make_model("cnn"), calib, "per_tensor_affine")
    runtime = qm.runtime()
    seen = []
    original = runtime.layers["conv_3x3_32a"]
    runtime.layers["conv_3x3_32a"] = lambda q, detailed: seen.append(detailed) or original(q, detailed)
    qm(x[:4])
    assert seen == [False]


def test_layers_frame_lists_qparams_and_backend_multipliers(data):
    calib, _x = data
    qm = calibrate(make_model("mobilenet"), calib, "per_channel_symmetric", "fbgemm")
    frame = qm.layers()
    assert list(frame.columns) == ["name", "kind", "input_scale", "input_zero_point", "weight_qscheme",
                                   "weight_scale", "weight_zero_point", "output_scale", "output_zero_point",
                                   "requant_scale", "saturated_pairs"]
    row = frame.set_index("name").loc["stem.0"]
    layer = qm.quant_layers["stem.0"]
    assert len(row.weight_scale) == layer.weight_q.shape[0] == len(row.requant_scale)
    assert set(row.weight_zero_point) == {0}
    expected = qcal.int8.requant_multipliers(layer.input_scale, layer.weight_scale, layer.output_scale,
                                             layer.bias, backend="fbgemm").multiplier
    assert row.requant_scale == expected.tolist()
    assert (frame.saturated_pairs == 0).all()


@pytest.mark.parametrize("backend", ["fbgemm", "qnnpack", "onnx", "q31"])
def test_per_tensor_layers_frame_and_traces_on_every_flavour(backend, data):
    calib, x = data
    qm = calibrate(make_model("resnet"), calib, "per_tensor_affine", backend)
    frame = qm.layers()
    assert len(frame) == len(qm.quant_layers) and frame.weight_scale.map(len).eq(1).all()
    assert frame.requant_scale.map(len).ge(1).all()
    traces = qm.trace(x[:4])
    assert {"add", "conv", "linear"} == {t.kind for t in traces.values()}
    cos = torch.nn.functional.cosine_similarity(qm(x).flatten(), qm.float_model(x).flatten(), dim=0)
    assert cos > 0.99


def test_scales_and_histograms_frames(data):
    calib, _ = data
    qm = calibrate(make_model("cnn"), calib, "qnnpack_default", "qnnpack")
    scales = qm.scales()
    assert list(scales.columns) == ["layer", "tensor", "channel", "scale", "zero_point", "min", "max"]
    w = scales[(scales.layer == "fc1") & (scales.tensor == "weight")]
    assert len(w) == 64 and (w["min"] <= w["max"]).all()
    acts = scales[scales.tensor == "activation"]
    assert len(acts) == len(qm.activations)
    hist = qm.histograms()
    assert list(hist.columns) == ["layer", "observer", "bin_left", "bin_right", "count", "clip_min", "clip_max"]
    # every value the input observer saw is counted once
    x_hist = hist[hist.layer == qm.activations[0].label]
    assert x_hist["count"].sum() == sum(b.numel() for b in calib)
    assert (hist.observer == "histogram").all()
    a = qm.activations[0]
    assert a.clip_min >= a.min - 1e-6 and a.clip_max <= a.max + 1e-6


def test_int8_bytes_is_about_a_quarter_of_the_float_weights(data):
    qm = calibrate(make_model("resnet"), data[0], "per_tensor_affine")
    float_bytes = sum(p.numel() * 4 for p in qm.float_model.parameters())
    assert float_bytes / 5 < qm.int8_bytes < float_bytes / 3


def test_quantized_model_pickles_and_runs_the_same(data):
    calib, x = data
    qm = calibrate(make_model("resnet"), calib, "fbgemm_default")
    expected = qm(x)
    again = pickle.loads(pickle.dumps(qm))
    assert torch.equal(again(x), expected)


def test_input_of_the_wrong_shape_names_the_shape(data):
    qm = calibrate(make_model("cnn"), data[0], "per_tensor_affine")
    with pytest.raises(ValueError, match=r"\(2, 3, 8, 8\)"):
        qm(torch.rand(2, 3, 8, 8))


class TinyTransformer(nn.Module):
    """A stand-in with the encoder's traits: Linear layers, LayerNorm, a keyword mask."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 32)
        self.qkv = nn.Linear(32, 96)
        self.out = nn.Linear(32, 32)
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, 10)

    def forward(self, x, attention_mask=None):
        h = self.embed(x)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        att = q @ k.transpose(1, 2) / 32**0.5
        if attention_mask is not None:
            att = att.masked_fill(~attention_mask[:, None, :], -1e9)
        h = self.norm(h + self.out(att.softmax(-1) @ v))
        return self.head(h.mean(1))


def test_module_swap_runs_each_linear_in_int8_with_keyword_masks():
    torch.manual_seed(0)
    model = TinyTransformer().eval()
    mask = torch.ones(16, 6, dtype=torch.bool)
    mask[:, 4:] = False
    calib = [{"x": torch.randn(16, 6, 8), "attention_mask": mask} for _ in range(2)]
    qm = calibrate(model, calib, "per_channel_symmetric", mode="modules")
    assert qm.mode == "modules" and set(qm.quant_layers) == {"embed", "qkv", "out", "head"}
    batch = {"x": torch.randn(16, 6, 8), "attention_mask": mask}
    out, ref = qm(batch), model(**batch)
    assert torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.99
    traces = qm.trace(batch)
    assert set(traces) == set(qm.quant_layers)
    assert traces["qkv"].fp32.shape == traces["qkv"].output_q.shape == (16, 6, 96)


def test_a_quantized_model_is_called_like_the_float_model():
    torch.manual_seed(0)
    model = TinyTransformer().eval()
    mask = torch.ones(16, 6, dtype=torch.bool)
    mask[:, 5:] = False
    x = torch.randn(16, 6, 8)
    qm = calibrate(model, [{"x": x, "attention_mask": mask}], "fbgemm_default", mode="modules")
    assert torch.equal(qm(x, attention_mask=mask), qm({"x": x, "attention_mask": mask}))
    assert torch.equal(qm(x, mask), qm((x, mask)))
    with pytest.raises(TypeError, match="arguments do not fit the model's forward"):
        qm(x, colour="blue")


@pytest.mark.parametrize("scheme", list(qcal.SCHEMES))
def test_tiny_encoder_in_module_swap_mode_stays_close_to_fp32(scheme):
    # Each preset runs on its own engine, as compare does. qnnpack_default's full-range
    # activations (0..255) on fbgemm would test something else: on a CPU without VNNI
    # (AVX2) FBGEMM's u8*s8 pair sums saturate in int16 (thousands of pairs per layer
    # here, cosine 0.93), which is why fbgemm's own default halves the range.
    from qcal.zoo.architectures import TinyEncoder

    torch.manual_seed(0)
    model = TinyEncoder().eval()
    x = torch.rand(64, 1, 8, 8)
    mask = torch.ones(64, 8, dtype=torch.bool)
    mask[::2, 6:] = False
    calib = [{"x": x[:32], "attention_mask": mask[:32]}, {"x": x[32:], "attention_mask": mask[32:]}]
    with pytest.warns(UserWarning, match="module-swap"):
        qm = calibrate(model, calib, scheme, PRESET_ENGINES.get(scheme, "fbgemm"))
    assert qm.mode == "modules" and qm.fallback_reason
    test = {"x": torch.rand(64, 1, 8, 8), "attention_mask": mask}
    cos = torch.nn.functional.cosine_similarity(qm(test).flatten(), model(**test).flatten(), dim=0)
    assert cos > 0.99, f"{scheme}: cosine {float(cos):.5f}"


def test_the_qnnpack_clamp_scramble_is_explained_and_can_be_turned_off(data):
    calib, x = data
    model = make_model("mobilenet")
    qm = calibrate(model, calib, "per_channel_symmetric", "qnnpack")
    assert any("qnnpack_clamp" in n for n in qm.notes)
    fixed = qm.with_backend("qnnpack", reproduce_torch_bugs=False)
    assert any("not reproduced" in n for n in fixed.notes)
    ref = model(x)

    def cosine(out):
        return float(torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0))

    assert cosine(fixed(x)) > 0.99
    # without the scramble, qnnpack differs from fbgemm only by rounding details
    assert cosine(fixed(x)) > cosine(qm(x)) - 1e-3
    assert qm.with_backend("fbgemm").notes == []


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits_cnn", "digits_mobilenet", "digits_resnet", "digits_mlp"])
def test_trained_zoo_models_are_identical_to_torch_on_held_out_digits(name):
    from qcal.zoo import zoo
    from qcal.zoo.datasets import digits_splits

    splits = digits_splits()
    calib, test = list(splits.calib[0].split(50)), splits.test[0]
    model = zoo.load(name)
    schemes = list(MATCHING_ENGINE)
    qms = calibrate_many(model, calib, schemes, ["fbgemm", "qnnpack"])
    mismatches = {}
    for (scheme, backend), qm in qms.items():
        _, expected = _torch_outputs(model, calib, scheme, backend, test)
        mismatches[(scheme, backend)] = _mismatches(qm(test), expected)
    assert mismatches == dict.fromkeys(qms, 0)


class MixedOps(nn.Module):
    """fp32 islands (torch.relu, GELU, softmax), a reshape through x.size(), functional pools."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.act = nn.GELU()
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        y = torch.relu(self.conv1(x))  # torch.relu: no quantized pattern, runs in fp32
        y = F.avg_pool2d(F.hardtanh(self.conv2(y), -1.0, 2.0), 2)
        y = self.act(y) + y  # fp32 GELU, then a quantized add of a requantized value
        y = F.max_pool2d(y, 3, stride=1, padding=1)
        return F.softmax(self.fc(y.reshape(y.size(0), -1)), dim=1)


@pytest.mark.parametrize("backend", ["fbgemm", "qnnpack"])
def test_fp32_islands_views_and_functional_ops_match_torch(backend, data):
    calib, x = data
    torch.manual_seed(0)
    model = MixedOps().eval()
    scheme = "fbgemm_default" if backend == "fbgemm" else "qnnpack_default"
    qm = calibrate(model, calib, scheme, backend)
    assert qm.mode == "graph"
    _, expected = _torch_outputs(model, calib, scheme, backend, x)
    assert _mismatches(qm(x), expected) == 0


class Concat(nn.Module):
    """torch.cat of a pooled conv output and the pooled model input, then more layers."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 6, 3, padding=1)
        self.b = nn.Conv2d(1, 5, 1)
        self.c = nn.Conv2d(12, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        y = torch.cat([F.max_pool2d(self.a(x), 2), F.max_pool2d(x, 2), F.relu(self.b(x[:, :, ::2, ::2]))], dim=1)
        return self.fc(torch.flatten(self.c(y), 1))


@pytest.mark.parametrize("scheme", ["fbgemm_default", "qnnpack_default", "per_tensor_affine"])
def test_concatenation_matches_torch_including_requantized_inputs(scheme, data):
    calib, x = data
    torch.manual_seed(0)
    model = Concat().eval()
    backend = "qnnpack" if scheme == "qnnpack_default" else "fbgemm"
    qm = calibrate(model, calib, scheme, backend)
    assert qm.mode == "graph"
    _, expected = _torch_outputs(model, calib, scheme, backend, x)
    assert _mismatches(qm(x), expected) == 0


@pytest.mark.parametrize("backend", ["fbgemm", "qnnpack"])
def test_order_sensitive_moving_average_observers_match_torch_through_shared_relu6(backend, data):
    # a moving average depends on the order and number of looks: the conv output, then
    # the ReLU6 output, per batch, exactly as torch's shared observer instance sees them
    from qcal.schemes import QSpec, Scheme

    calib, x = data
    scheme = Scheme("moving", QSpec("qint8", "per_channel_affine", "moving_average"),
                    QSpec("quint8", "per_tensor_affine", "moving_average", reduce_range=True))
    model = make_model("mobilenet")
    qm = calibrate(model, calib, scheme, backend)
    _, expected = _torch_outputs(model, calib, scheme, backend, x)
    assert _mismatches(qm(x), expected) == 0


@pytest.mark.slow
def test_trained_encoder_in_module_swap_mode_per_scheme_and_backend():
    from qcal.zoo import zoo
    from qcal.zoo.datasets import digits_splits

    splits = digits_splits()
    model = zoo.load("digits_encoder")
    gen = torch.Generator().manual_seed(0)

    def masked(x):
        keep = torch.randint(6, 9, (x.shape[0],), generator=gen)
        return {"x": x, "attention_mask": torch.arange(8)[None, :] < keep[:, None]}

    calib = [masked(b) for b in splits.calib[0].split(50)]
    test = masked(splits.test[0])
    ref = model(**test)
    fp32_acc = float((ref.argmax(1) == splits.test[1]).float().mean())
    for (scheme, backend), qm in calibrate_many(model, calib, list(qcal.SCHEMES), ["fbgemm", "qnnpack"]).items():
        out = qm(test)
        cos = float(torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0))
        acc = float((out.argmax(1) == splits.test[1]).float().mean())
        # Full-range activations (qnnpack_default) on fbgemm: without AVX512-VNNI FBGEMM's u8*s8
        # pair sums really saturate in int16 (reproduced bit for bit), which costs some cosine
        # (0.9963 on an AVX2 CPU); everywhere else the bound is the tight one.
        saturating = (backend == "fbgemm" and not qm.scheme.activation.reduce_range
                      and isa_saturates("gemm"))
        bound = 0.995 if saturating else 0.998
        print(f"{scheme:22s} {backend:8s} cosine {cos:.5f} accuracy {acc:.4f} (fp32 {fp32_acc:.4f})")
        assert qm.mode == "modules" and cos > bound and acc > fp32_acc - 0.02, (scheme, backend)
