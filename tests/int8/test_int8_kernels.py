"""qcal.int8.conv2d / linear against torch.ops.quantized under the fbgemm and qnnpack engines.

A randomized sweep of layer configurations (shapes, stride, padding, dilation, groups,
depthwise, bias, ReLU, per-tensor / per-channel, zero and non-zero weight zero points,
activations in [0,127] and [0,255], power-of-two scales that put y*M exactly on .5) must give
zero differing output codes. Torch is the oracle: quantized tensors are built from the same
integer codes and every layer is prepacked afresh (QNNPACK caches the output scale in its
packed weights).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import torch

import qcal.int8 as qi

ENGINES = ("fbgemm", "qnnpack", "x86")


@dataclass(frozen=True)
class Config:
    kind: str  # "linear" | "conv"
    n: int
    c: int
    o: int
    hw: tuple[int, int]
    k: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    per_channel: bool
    w_zp_nonzero: bool
    bias: bool
    relu: bool
    full_range: bool
    ties: bool
    seed: int


def make_config(rng: random.Random, seed: int) -> Config:
    kind = rng.choice(["linear", "conv", "conv", "conv"])
    shape = rng.choice(["1x1", "3x3", "3x3s2", "dil", "groups", "dw", "dw5", "odd"])
    c, o, groups = rng.choice([3, 8, 16, 24]), rng.choice([4, 8, 16]), 1
    k, stride, pad, dil = (3, 3), (1, 1), (1, 1), (1, 1)
    if shape == "1x1":
        k, pad = (1, 1), (0, 0)
    elif shape == "3x3s2":
        stride = (2, 2)
    elif shape == "dil":
        dil, pad = (2, 2), (2, 1)
    elif shape == "groups":
        groups = rng.choice([2, 4])
        c, o = groups * rng.choice([2, 4, 8]), groups * rng.choice([1, 2, 4])
    elif shape in ("dw", "dw5"):
        c = rng.choice([8, 16, 32, 12])
        groups, o = c, c * rng.choice([1, 1, 2])
        k = (5, 5) if shape == "dw5" else (3, 3)
        pad = (k[0] // 2, k[1] // 2) if rng.random() < 0.8 else (0, 0)
        stride = rng.choice([(1, 1), (2, 2)])
    elif shape == "odd":
        k, stride, pad = (rng.choice([1, 2, 3]), rng.choice([1, 3])), (rng.choice([1, 2]), 1), (0, 1)
    hw = (rng.randint(max(k[0] * dil[0], 3), 11), rng.randint(max(k[1] * dil[1], 3), 11))
    return Config(
        kind, rng.randint(1, 3), c, o, hw, k, stride, pad, dil, groups,
        per_channel=rng.random() < 0.5, w_zp_nonzero=rng.random() < 0.3, bias=rng.random() < 0.7,
        relu=rng.random() < 0.4, full_range=rng.random() < 0.5, ties=rng.random() < 0.5, seed=seed,
    )


def make_tensors(cfg: Config):
    g = torch.Generator().manual_seed(cfg.seed)
    hi = 256 if cfg.full_range else 128
    if cfg.kind == "linear":
        x = torch.randint(0, hi, (cfg.n, cfg.hw[0], cfg.c), generator=g, dtype=torch.uint8)
        w = torch.randint(-128, 128, (cfg.o, cfg.c), generator=g, dtype=torch.int8)
    else:
        x = torch.randint(0, hi, (cfg.n, cfg.c, *cfg.hw), generator=g, dtype=torch.uint8)
        w = torch.randint(-128, 128, (cfg.o, cfg.c // cfg.groups, *cfg.k), generator=g, dtype=torch.int8)
    za = int(torch.randint(0, hi, (1,), generator=g))
    zo = int(torch.randint(0, 256, (1,), generator=g))
    if cfg.ties:  # powers of two: y*M lands exactly on .5 for odd accumulators
        sa = 2.0 ** -int(torch.randint(2, 6, (1,), generator=g))
        sw_t = 2.0 ** -torch.randint(3, 9, (cfg.o,), generator=g).double()
        so = 2.0 ** -int(torch.randint(-6, 2, (1,), generator=g))
    else:
        sa = float(torch.rand(1, generator=g)) * 0.1 + 0.005
        sw_t = torch.rand(cfg.o, generator=g).double() * 0.02 + 0.001
        so = float(torch.rand(1, generator=g)) * 2 + 0.05
    zw_t = torch.randint(-20, 20, (cfg.o,), generator=g) if cfg.w_zp_nonzero else torch.zeros(cfg.o, dtype=torch.long)
    if cfg.per_channel:
        w_scale, w_zp = sw_t, zw_t
    else:
        w_scale, w_zp = float(sw_t[0]), int(zw_t[0])
    bias = None
    if cfg.bias:
        ats = sa * (sw_t if cfg.per_channel else torch.full((cfg.o,), float(sw_t[0]), dtype=torch.double))
        halves = torch.randint(-4000, 4000, (cfg.o,), generator=g).double() * 0.5
        bias = (halves * ats).float() if cfg.ties else (torch.randn(cfg.o, generator=g) * 3)
    return x, w, w_scale, w_zp, bias, sa, za, so, zo


def torch_oracle(cfg: Config, engine: str, x, w, w_scale, w_zp, bias, sa, za, so, zo):
    """torch's quantized op on the same codes; None when the engine refuses the layer."""
    torch.backends.quantized.engine = engine
    xq = torch._make_per_tensor_quantized_tensor(x, sa, za)
    if cfg.per_channel:
        wq = torch._make_per_channel_quantized_tensor(w, w_scale, w_zp, 0)
    else:
        wq = torch._make_per_tensor_quantized_tensor(w, w_scale, w_zp)
    try:
        if cfg.kind == "linear":
            packed = torch.ops.quantized.linear_prepack(wq, bias)
            op = torch.ops.quantized.linear_relu if cfg.relu else torch.ops.quantized.linear
            return op(xq, packed, so, zo).int_repr()
        packed = torch.ops.quantized.conv2d_prepack(wq, bias, list(cfg.stride), list(cfg.padding), list(cfg.dilation), cfg.groups)
        op = torch.ops.quantized.conv2d_relu if cfg.relu else torch.ops.quantized.conv2d
        return op(xq, packed, so, zo).int_repr()
    except RuntimeError as err:
        return str(err)


def qcal_run(cfg: Config, engine: str, x, w, w_scale, w_zp, bias, sa, za, so, zo, method="auto"):
    if cfg.kind == "linear":
        packed = qi.pack_linear(w, w_scale, w_zp, bias, backend=engine, method=method)
    else:
        packed = qi.pack_conv2d(w, w_scale, w_zp, bias, stride=cfg.stride, padding=cfg.padding,
                                dilation=cfg.dilation, groups=cfg.groups, backend=engine, method=method)
    return packed(x, sa, za, so, zo, relu=cfg.relu)


def sweep(engine: str, count: int, seed: int) -> dict:
    rng = random.Random(seed)
    stats = {"configs": 0, "mismatched_values": 0, "bad_configs": [], "refused": {}}
    methods = ("auto", "float")
    for i in range(count):
        cfg = make_config(rng, seed * 100003 + i)
        tensors = make_tensors(cfg)
        ref = torch_oracle(cfg, engine, *tensors)
        if isinstance(ref, str):  # the backend itself refuses this layer
            key = ref.splitlines()[0][:120]
            stats["refused"][key] = stats["refused"].get(key, 0) + 1
            continue
        out = qcal_run(cfg, engine, *tensors, method=methods[i % 2])
        diff = int((out.int() != ref.int()).sum())
        stats["configs"] += 1
        stats["mismatched_values"] += diff
        if diff:
            stats["bad_configs"].append((cfg, diff))
    return stats


@pytest.mark.parametrize("engine", ENGINES)
def test_sweep_matches_torch_bit_for_bit(engine):
    stats = sweep(engine, 60, seed={"fbgemm": 1, "qnnpack": 2, "x86": 3}[engine])
    assert stats["configs"] >= 40, stats["refused"]
    assert stats["mismatched_values"] == 0, stats["bad_configs"][:3]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_full_sweep_matches_torch_bit_for_bit(engine):
    stats = sweep(engine, 560, seed={"fbgemm": 11, "qnnpack": 12, "x86": 13}[engine])
    print(engine, {k: v for k, v in stats.items() if k != "bad_configs"})
    assert stats["configs"] >= 500, stats["refused"]
    assert stats["mismatched_values"] == 0, stats["bad_configs"][:3]


@pytest.mark.parametrize("method", ["float", "auto"])
def test_conv_output_is_channels_last_like_torchs(method):
    x = torch.randint(0, 128, (2, 8, 6, 6), dtype=torch.uint8)
    w = torch.randint(-128, 128, (4, 8, 3, 3), dtype=torch.int8)
    packed = qi.pack_conv2d(w, 0.01, 0, None, padding=1, method=method)
    out = packed(x, 0.1, 3, 0.5, 7)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert packed(x, 0.1, 3, 0.5, 7, detailed=True).out.is_contiguous(memory_format=torch.channels_last)
