"""qcal.zoo.architectures / qcal.zoo.imagenet_like: shapes, fx-traceability, the encoder's mask, BN init."""

import pytest
import torch
from torch import fx, nn

from qcal.zoo import zoo
from qcal.zoo.architectures import (
    DigitsCNN,
    DigitsMobileNet,
    MobileNetV2Like,
    ResNet18Like,
    TinyEncoder,
    init_realistic_,
)

TRACEABLE = [n for n in zoo.names() if zoo.info(n).graph_traceable]


@pytest.mark.parametrize("name", TRACEABLE)
def test_traceable_models_trace_with_fx_and_match_eager(name):
    entry = zoo.info(name)
    model = entry.factory().eval()
    graph = fx.symbolic_trace(model)
    batch = 1 if entry.task == "benchmark" else 5
    x = torch.randn(batch, *entry.input_shape)
    with torch.no_grad():
        expected = model(x)
        assert expected.shape == (batch, 1000 if entry.task == "benchmark" else 10)
        torch.testing.assert_close(graph(x), expected)


def test_tiny_encoder_fails_fx_tracing_by_design():
    assert not zoo.info("digits_encoder").graph_traceable
    with pytest.raises(fx.proxy.TraceError, match="control flow"):
        fx.symbolic_trace(TinyEncoder())
    # even with the mask fixed to None, the input-shape branch stops the tracer
    with pytest.raises(fx.proxy.TraceError):
        fx.symbolic_trace(TinyEncoder(), concrete_args={"attention_mask": None})


@torch.no_grad()
def test_tiny_encoder_takes_attention_mask_as_a_keyword():
    model = TinyEncoder().eval()
    x = torch.rand(3, 1, 8, 8)
    plain = model(x)
    assert plain.shape == (3, 10)
    torch.testing.assert_close(model(x, attention_mask=torch.ones(3, 8)), plain)  # nothing padded
    mask = torch.ones(3, 8)
    mask[:, 6:] = 0
    masked = model(x, attention_mask=mask)
    assert not torch.allclose(masked, plain)
    # padded tokens are ignored: changing them does not change the output
    y = x.clone()
    y[..., 6:, :] = torch.rand(3, 1, 2, 8)
    torch.testing.assert_close(model(y, attention_mask=mask), masked)
    # token-sequence input (B, T, 8) is the same computation as the image layout
    torch.testing.assert_close(model(x.view(3, 8, 8)), plain)


def test_digits_cnn_first_layer_is_named_32a_but_has_40_filters():
    conv = DigitsCNN().conv_3x3_32a
    assert isinstance(conv, nn.Conv2d) and conv.out_channels == 40 and conv.kernel_size == (3, 3)


def test_digits_mobilenet_pruned_channels_are_exactly_dead_after_relu6():
    model = DigitsMobileNet().eval()
    stem_out = model.stem(torch.rand(16, 1, 8, 8))  # (B, 32, 8, 8)
    dead = stem_out.abs().amax(dim=(0, 2, 3)) == 0
    assert dead.sum() == 2 and dead[8] and dead[24]


@pytest.mark.parametrize("cls", [ResNet18Like, MobileNetV2Like])
def test_benchmark_models_have_torchvision_parameter_counts(cls):
    expected = {ResNet18Like: 11_689_512, MobileNetV2Like: 3_504_872}[cls]
    assert sum(p.numel() for p in cls().parameters()) == expected


@torch.no_grad()
def test_init_realistic_is_seeded_sets_bn_stats_and_keeps_activations_in_scale():
    a = MobileNetV2Like()
    state = torch.get_rng_state()
    init_realistic_(a, seed=3, batch_size=2, input_shape=(3, 64, 64))
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    b = init_realistic_(MobileNetV2Like(), seed=3, batch_size=2, input_shape=(3, 64, 64))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb), ka
    assert not a.training
    bns = [m for m in a.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.momentum == 0.1 and int(m.num_batches_tracked) == 2 for m in bns)
    assert not torch.allclose(bns[-1].running_var, torch.ones_like(bns[-1].running_var))
    # in eval mode, the last features are normalised like in training: unit-ish scale
    feats = a.features(torch.randn(2, 3, 64, 64))
    assert 0.1 < float(feats.std()) < 10 and torch.isfinite(feats).all()
