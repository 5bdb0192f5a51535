"""qcal.int8.conv2d / linear against torch.ops.quantized under the fbgemm and qnnpack engines.

A randomized sweep of layer configurations (shapes, stride, padding, dilation, groups,
depthwise, bias, ReLU, per-tensor / per-channel, zero and non-zero weight zero points,
activations in [0,127] and [0,255], power-of-two scales that put y*M exactly on .5) must give
zero differing output codes. Torch is the oracle: quantized tensors are built from the same
integer codes and every layer is prepacked afresh (QNNPACK caches the output scale in its
packed weights).

About one configuration in six is made into one the backends may refuse, on purpose: a
kernel larger than the padded image (an output with no rows), an empty batch (answered with
an empty output), int8 activations, a rank-1 linear input, a conv input with the wrong number
of channels, an output scale so large that the requantization scale is a float32 subnormal
(qnnpack refuses it, fbgemm answers). Case by case, qcal must refuse (ValueError/TypeError
naming the backend's reason) exactly when torch does: 0 configurations torch refuses and qcal
answers, 0 that torch answers and qcal refuses.
"""

from __future__ import annotations

import dataclasses
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
    refuse: str = ""  # a REFUSALS kind made on purpose, or "" for an ordinary layer


# refusal kind -> (exception qcal raises, words of the backend's reason in its message: one of them)
REFUSALS = {
    "tiny_image": (ValueError, ("each dimension of output tensor should be greater than 0",  # fbgemm, qnnpack
                                "negative dimension")),  # x86 via oneDNN (it answers a zero size)
    "empty_batch": (None, ""),  # torch answers an empty batch with an empty output
    "int8_act": (TypeError, "activations"),
    "rank1": (ValueError, "rank"),
    "channels": (ValueError, "does not fit"),
    "huge_out_scale": (ValueError, "requantization scale must be finite and positive"),
}
# layers torch answers and qcal refuses on purpose: kind -> words of qcal's reason
BY_DESIGN = {"overhang": "overhangs the padded input",
             "one_column": "is one column wide at a column stride"}  # on oneDNN only (see one_column)
_CONV_ONLY = ("tiny_image", "channels")
_LINEAR_ONLY = ("rank1",)


def _refusal(cfg: Config) -> Config:
    """One config in six turned into one a backend may refuse (its own rng: the ordinary
    configs stay the same)."""
    r = random.Random(cfg.seed ^ 0x5EED)
    if r.random() >= 1 / 6:
        return cfg
    skip = _LINEAR_ONLY if cfg.kind == "conv" else _CONV_ONLY
    kind = r.choice([k for k in REFUSALS if k not in skip])
    if kind == "tiny_image":  # pad 0, an image short of the dilated kernel by >= a stride
        k = cfg.k if max(cfg.k) > 1 else (3, 3)
        eff = [cfg.dilation[i] * (k[i] - 1) + 1 for i in range(2)]
        axis = r.choice([i for i in range(2) if eff[i] > 1])
        stride, hw = list(cfg.stride), list(cfg.hw)
        stride[axis] = min(stride[axis], eff[axis] - 1)  # (H - eff) / s must truncate below 0
        hw[axis] = r.randint(1, eff[axis] - stride[axis])
        return dataclasses.replace(cfg, k=k, padding=(0, 0), stride=tuple(stride), hw=tuple(hw),
                                   refuse=kind)
    return dataclasses.replace(cfg, refuse=kind)


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
    n = 0 if cfg.refuse == "empty_batch" else cfg.n
    c = cfg.c + cfg.groups if cfg.refuse == "channels" else cfg.c
    if cfg.kind == "linear":
        x = torch.randint(0, hi, (n, cfg.hw[0], cfg.c), generator=g, dtype=torch.uint8)
        w = torch.randint(-128, 128, (cfg.o, cfg.c), generator=g, dtype=torch.int8)
    else:
        x = torch.randint(0, hi, (n, c, *cfg.hw), generator=g, dtype=torch.uint8)
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
    if cfg.refuse == "int8_act":
        x, za = (x.int() - 128).to(torch.int8), za - 128
    elif cfg.refuse == "rank1":
        x = x.reshape(-1, cfg.c)[0]
    elif cfg.refuse == "huge_out_scale":  # sa * sw / so below 2^-126: a float32 subnormal
        so = 1e35
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


def _refusal_parity(cfg: Config, ref, err: Exception | None, stats: dict) -> bool:
    """Record one case's refusals; True when both refused (nothing left to compare)."""
    if isinstance(ref, str):  # the backend itself refuses this layer
        key = ref.splitlines()[0][:120]
        stats["refused"][key] = stats["refused"].get(key, 0) + 1
        if err is None:
            stats["torch_refused_qcal_answered"].append((cfg, key))
            return True
        kind, words = REFUSALS.get(cfg.refuse, (None, ""))
        words = (words,) if isinstance(words, str) else words
        if kind is None or not isinstance(err, kind) or not any(w in str(err) for w in words):
            stats["reasons_not_named"].append((cfg, key, repr(err)))
        return True
    if err is not None:
        by_design = isinstance(err, ValueError) and any(w in str(err) for w in BY_DESIGN.values())
        stats["refused_by_design" if by_design else "torch_answered_qcal_refused"].append((cfg, repr(err)))
        return True
    return False


def overhangs(cfg: Config) -> bool:
    """Whether a conv's last kernel window runs past the padded input (torch's truncated size >= 1
    where the floor size is <= 0)."""
    for i in range(2):
        num = cfg.hw[i] + 2 * cfg.padding[i] - cfg.dilation[i] * (cfg.k[i] - 1) - 1
        if num < 0 and int(num / cfg.stride[i]) + 1 >= 1:
            return True
    return False


def on_onednn(engine: str) -> bool:
    """Whether torch's engine hands convolutions to oneDNN here (x86 on a VNNI CPU), as qcal
    models the route (``qcal.int8.backends.onednn``, checked on such a CPU by these sweeps)."""
    w = torch.zeros(4, 4, 1, 1, dtype=torch.int8)
    return qi.pack_conv2d(w, 0.1, 0, None, backend=engine).flavour() == "onednn"


def refused_here(cfg: Config, engine: str) -> bool:
    """Whether the engine refuses a config made to be refused: every kind but an empty batch
    (and a subnormal requantization scale, which only qnnpack refuses);
    an image too small for the kernel only where torch's output size is negative on oneDNN,
    which answers a zero size with an empty tensor."""
    if not cfg.refuse or REFUSALS[cfg.refuse][0] is None:
        return False
    if cfg.refuse == "huge_out_scale":
        return engine == "qnnpack"  # fbgemm answers it
    if cfg.refuse == "tiny_image" and on_onednn(engine):
        return min(int((cfg.hw[i] - cfg.dilation[i] * (cfg.k[i] - 1) - 1) / cfg.stride[i]) + 1 for i in range(2)) < 0
    return True


def one_column(cfg: Config) -> bool:
    """A conv whose output is one column wide (more than one row) at a column stride above 1."""
    out = [(cfg.hw[i] + 2 * cfg.padding[i] - cfg.dilation[i] * (cfg.k[i] - 1) - 1) // cfg.stride[i] + 1
           for i in range(2)]
    return out[1] == 1 and out[0] > 1 and cfg.stride[1] > 1


def sweep(engine: str, count: int, seed: int) -> dict:
    rng = random.Random(seed)
    stats = {"configs": 0, "mismatched_values": 0, "bad_configs": [], "refused": {},
             "made_to_refuse": 0, "torch_refused_qcal_answered": [],
             "torch_answered_qcal_refused": [], "refused_by_design": [], "reasons_not_named": []}
    methods = ("auto", "float")
    for i in range(count):
        cfg = _refusal(make_config(rng, seed * 100003 + i))
        stats["made_to_refuse"] += refused_here(cfg, engine)
        tensors = make_tensors(cfg)
        ref = torch_oracle(cfg, engine, *tensors)
        out, err = None, None
        try:
            out = qcal_run(cfg, engine, *tensors, method=methods[i % 2])
        except (ValueError, TypeError) as e:
            err = e
        if _refusal_parity(cfg, ref, err, stats):
            continue
        diff = int((out.int() != ref.int()).sum())
        stats["configs"] += 1
        stats["mismatched_values"] += diff
        if diff:
            stats["bad_configs"].append((cfg, diff))
    return stats


def check_sweep(stats: dict, min_configs: int) -> None:
    """Exact values where torch answers; refusals exactly where torch refuses, with reasons."""
    summary = {k: v if isinstance(v, int | dict) else len(v) for k, v in stats.items()}
    print(summary)
    assert stats["configs"] >= min_configs, stats["refused"]
    assert stats["mismatched_values"] == 0, stats["bad_configs"][:3]
    assert stats["torch_refused_qcal_answered"] == []
    assert stats["torch_answered_qcal_refused"] == []
    for cfg, reason in stats["refused_by_design"]:  # torch answers, qcal refuses on purpose
        print("refused by design:", cfg, reason)
        assert cfg.kind == "conv", (cfg, reason)
        assert (overhangs(cfg) and BY_DESIGN["overhang"] in reason) or (
            one_column(cfg) and BY_DESIGN["one_column"] in reason and "oneDNN" in reason), (cfg, reason)
    assert stats["reasons_not_named"] == []
    assert sum(stats["refused"].values()) >= stats["made_to_refuse"] // 2 > 0  # the sweep reaches refusals


@pytest.mark.parametrize("engine", ENGINES)
def test_sweep_matches_torch_bit_for_bit(cpu_set, engine):
    # under each instruction set the machine can run (the CPU matrix); the full sweep below
    # runs on the machine's own set only, to keep CI's time
    check_sweep(sweep(engine, 60, seed={"fbgemm": 1, "qnnpack": 2, "x86": 3}[engine]), 35)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_full_sweep_matches_torch_bit_for_bit(engine):
    check_sweep(sweep(engine, 560, seed={"fbgemm": 11, "qnnpack": 12, "x86": 13}[engine]), 420)


OVERHANGS = [((11, 2), (3, 3), (2, 2), "1 column"), ((6, 3), (3, 5), (1, 3), "2 columns"),
             ((4, 4), (5, 5), (2, 2), "1 row and 1 column")]


@pytest.mark.parametrize(("hw", "k", "stride", "past"), OVERHANGS)
@pytest.mark.parametrize("cpu", ["avx2", "avx512_vnni"])
def test_a_kernel_overhanging_the_image_by_less_than_a_stride_is_refused(monkeypatch, hw, k, stride, past, cpu):
    # torch sizes conv outputs with C's truncating division: (2 - 3) / 2 + 1 = 1 column, whose
    # window reads column 2, past the image. FBGEMM on AVX2 answers as if it held zero-point
    # pixels; on an AVX-512 Xeon 5 of 20 values differed from that; QNNPACK segfaults (torch
    # 2.13; not called here). qcal refuses the layer on every backend and CPU, saying why.
    monkeypatch.setenv("QCAL_CPU", cpu)
    x = torch.randint(0, 256, (1, 4, *hw), dtype=torch.uint8)
    w = torch.randint(-128, 128, (4, 4, *k), dtype=torch.int8)
    cfg = Config("conv", 1, 4, 4, hw, k, stride, (0, 0), (1, 1), 1, False, False, True, False, True, False, 0)
    assert overhangs(cfg)
    ref = torch_oracle(cfg, "fbgemm", x, w, 0.01, 0, None, 0.05, 3, 0.5, 7)
    assert not isinstance(ref, str), ref  # torch answers it
    for backend in ENGINES:
        with pytest.raises(ValueError, match=f"overhangs the padded input by {past}") as info:
            qi.conv2d(x, 0.05, 3, w, 0.01, 0, None, 0.5, 7, stride=stride, backend=backend)
        assert "reads memory outside the tensor" in str(info.value) and str(stride) in str(info.value)
    empty = qi.conv2d(x[:0], 0.05, 3, w, 0.01, 0, None, 0.5, 7, stride=stride)  # nothing to read
    assert empty.shape == (0, *ref.shape[1:])


@pytest.mark.parametrize("engine", ["fbgemm", "x86"])
def test_the_sweep_counts_overhanging_layers_as_refused_by_design(engine):
    stats = {"refused": {}, "torch_refused_qcal_answered": [], "torch_answered_qcal_refused": [],
             "refused_by_design": [], "reasons_not_named": [], "configs": 0}
    for hw, k, stride, _ in OVERHANGS:
        cfg = Config("conv", 1, 4, 4, hw, k, stride, (0, 0), (1, 1), 1, False, False, True, False, True, False, 7)
        tensors = make_tensors(cfg)
        ref = torch_oracle(cfg, engine, *tensors)
        with pytest.raises(ValueError) as info:
            qcal_run(cfg, engine, *tensors)
        assert _refusal_parity(cfg, ref, info.value, stats)
    assert len(stats["refused_by_design"]) == len(OVERHANGS) and stats["torch_answered_qcal_refused"] == []


@pytest.mark.parametrize(("case", "kwargs", "message"), [
    ("stride 0 (torch crashes)", {"stride": (0, 1)}, "stride"),
    ("dilation 0 (torch answers a meaningless shape)", {"dilation": (0, 1)}, "dilation"),
    ("negative padding (fbgemm answers, qnnpack asserts)", {"padding": (-1, 0)}, "padding"),
])
def test_layer_geometry_torch_mishandles_is_refused(case, kwargs, message):
    w = torch.randint(-128, 128, (4, 4, 3, 3), dtype=torch.int8)
    with pytest.raises(ValueError, match=message):
        qi.pack_conv2d(w, 0.01, 0, None, **kwargs)


@pytest.mark.parametrize("engine", ENGINES)
def test_qparams_torch_accepts_but_qcal_refuses(engine):
    # qcal is stricter than torch here, on purpose: torch answers these with codes that
    # follow no rule (an output zero point outside uint8 wraps; a zero or infinite output
    # scale makes acc * inf). Counted: 3 kinds of qparams, refused on both engines.
    x = torch.randint(0, 256, (1, 4, 5, 5), dtype=torch.uint8)
    w = torch.randint(-128, 128, (4, 4, 3, 3), dtype=torch.int8)
    for so, zo, words in ((0.5, 300, "out_zero_point 300"), (0.0, 7, "out_scale"),
                          (float("inf"), 7, "out_scale")):
        with pytest.raises(ValueError, match=words):
            qi.conv2d(x, 0.05, 3, w, 0.01, 0, None, so, zo, backend=engine)


@pytest.mark.parametrize("method", ["float", "auto"])
def test_conv_output_is_channels_last_like_torchs(method):
    x = torch.randint(0, 128, (2, 8, 6, 6), dtype=torch.uint8)
    w = torch.randint(-128, 128, (4, 8, 3, 3), dtype=torch.int8)
    packed = qi.pack_conv2d(w, 0.01, 0, None, padding=1, method=method)
    out = packed(x, 0.1, 3, 0.5, 7)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert packed(x, 0.1, 3, 0.5, 7, detailed=True).out.is_contiguous(memory_format=torch.channels_last)
