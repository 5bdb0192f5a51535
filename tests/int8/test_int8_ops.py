"""qcal.int8 add and pools against torch's quantized ops under the fbgemm and qnnpack engines."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

import qcal.int8 as qi

ENGINES = ("fbgemm", "qnnpack", "x86")


def qt(x, s, z):
    q = torch._make_per_tensor_quantized_tensor(x.contiguous(), s, z)
    return q.contiguous(memory_format=torch.channels_last) if x.is_contiguous(memory_format=torch.channels_last) else q


def rand_image(rng: random.Random, channels_last: bool):
    n, c = rng.randint(1, 3), rng.choice([1, 3, 8, 16, 17, 24, 33, 64])
    h, w = rng.randint(2, 12), rng.randint(2, 12)
    x = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("engine", ENGINES)
def test_add_and_add_relu_match_torch_bit_for_bit(engine):
    torch.backends.quantized.engine = engine
    rng = random.Random(3)
    for _ in range(60):
        a = rand_image(rng, rng.random() < 0.5)
        b = torch.randint(0, 256, a.shape, dtype=torch.uint8).contiguous(
            memory_format=torch.channels_last if a.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)
        sa, sb, so = rng.choice([0.1, 0.037, 2**-3]), rng.choice([0.05, 0.2, 2**-4]), rng.choice([0.1, 0.3, 2**-3])
        za, zb, zo = rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255)
        for relu in (False, True):
            op = torch.ops.quantized.add_relu if relu else torch.ops.quantized.add
            ref = op(qt(a, sa, za), qt(b, sb, zb), so, zo).int_repr()
            out = qi.add(a, sa, za, b, sb, zb, so, zo, relu=relu, backend=engine)
            assert torch.equal(out, ref), (engine, relu, a.shape)


def test_fbgemm_add_rounds_scalar_tails_of_each_thread_range_like_torch():
    # Above torch's grain size (32768) the range splits across threads; each part ends in a
    # scalar tail that adds the zero point before rounding.
    torch.backends.quantized.engine = "fbgemm"
    g = torch.Generator().manual_seed(5)
    for n in (32768 + 77, 100_003):
        a = torch.randint(0, 256, (n,), generator=g, dtype=torch.uint8)
        b = torch.randint(0, 256, (n,), generator=g, dtype=torch.uint8)
        ref = torch.ops.quantized.add(qt(a, 0.125, 130), qt(b, 0.05, 110), 0.1, 47).int_repr()
        assert torch.equal(qi.add(a, 0.125, 130, b, 0.05, 110, 0.1, 47), ref)


@pytest.mark.parametrize("capability", ["AVX2", "AVX512"])
def test_fbgemm_add_steps_64_codes_on_avx2_and_avx512_cpus(monkeypatch, capability):
    # qadd_stub has no AVX-512 build (REGISTER_DISPATCH), so AVX-512 CPUs run the AVX2 loop:
    # two 32-code vectors per step. Tie c = 0.5*5 + 0.5*0 = 2.5: vector lanes rint(2.5) + 1 = 3,
    # the scalar tail rint(2.5 + 1) = 4. 100 codes: 64 on vector lanes, 36 in the tail.
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    a, b = torch.full((100,), 5, dtype=torch.uint8), torch.zeros(100, dtype=torch.uint8)
    assert qi.add(a, 0.5, 0, b, 0.5, 0, 1.0, 1).tolist() == [3] * 64 + [4] * 36
    assert qi.add(a[:63], 0.5, 0, b[:63], 0.5, 0, 1.0, 1).tolist() == [4] * 63


def test_fbgemm_add_vector_steps_match_torch_on_this_cpu():
    torch.backends.quantized.engine = "fbgemm"
    a = torch.full((200,), 5, dtype=torch.uint8)
    b = torch.zeros(200, dtype=torch.uint8)
    for n in (1, 31, 32, 33, 63, 64, 65, 127, 128, 129, 200):
        ref = torch.ops.quantized.add(qt(a[:n], 0.5, 0), qt(b[:n], 0.5, 0), 1.0, 1).int_repr()
        assert torch.equal(qi.add(a[:n], 0.5, 0, b[:n], 0.5, 0, 1.0, 1), ref), n


def test_qnnpack_add_rounds_half_away_from_zero_in_fixed_point():
    # ma = mb = 0.5: shift 22, multipliers 2^21; +2.5 -> 3 and -2.5 -> -3 (half away from zero)
    torch.backends.quantized.engine = "qnnpack"
    a, b = torch.tensor([5, 0], dtype=torch.uint8), torch.tensor([10, 5], dtype=torch.uint8)
    out = qi.add(a, 0.5, 0, b, 0.5, 10, 1.0, 10, backend="qnnpack")
    assert out.tolist() == [13, 7]
    assert torch.equal(out, torch.ops.quantized.add(qt(a, 0.5, 0), qt(b, 0.5, 10), 1.0, 10).int_repr())


def test_qnnpack_add_refuses_scale_ratios_it_cannot_represent():
    a = torch.zeros(4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="2\\^-14"):
        qi.add(a, 1000.0, 0, a, 1.0, 0, 1.0, 0, backend="qnnpack")


@pytest.mark.parametrize("engine", ENGINES)
def test_pools_match_torch_bit_for_bit_in_both_memory_formats(engine):
    torch.backends.quantized.engine = engine
    rng = random.Random({"fbgemm": 7, "qnnpack": 8, "x86": 9}[engine])
    checked = 0
    for _ in range(120):
        x = rand_image(rng, rng.random() < 0.5)
        s, z = rng.choice([0.1, 0.037, 1.0, 2**-3]), rng.randint(0, 255)
        h, w = x.shape[-2:]
        k = (rng.randint(1, min(h, 4)), rng.randint(1, min(w, 4)))
        st = (rng.randint(1, 3), rng.randint(1, 3))
        p = (rng.randint(0, k[0] // 2), rng.randint(0, k[1] // 2))
        ceil, cip, dov = rng.random() < 0.3, rng.random() < 0.5, rng.choice([None, None, 3, 7])
        xq = qt(x, s, z)
        if k != (1, 1):  # QNNPACK refuses 1x1 max pooling; the maximum is the same everywhere else
            ref = torch.max_pool2d(xq, k, st, p, 1, ceil).int_repr()
            assert torch.equal(qi.max_pool2d(x, k, st, p, 1, ceil), ref)
        osz = (rng.randint(1, h), rng.randint(1, w))
        ref = F.adaptive_avg_pool2d(xq, osz).int_repr()
        assert torch.equal(qi.adaptive_avg_pool2d(x, s, z, osz, backend=engine), ref), (engine, x.shape, osz)
        try:
            ref = F.avg_pool2d(xq, k, st, p, ceil, cip, dov).int_repr()
        except RuntimeError:  # QNNPACK refuses 1x1 windows
            with pytest.raises(ValueError, match="1x1"):
                qi.avg_pool2d(x, s, z, k, st, p, ceil, cip, dov, backend=engine)
            continue
        out = qi.avg_pool2d(x, s, z, k, st, p, ceil, cip, dov, backend=engine)
        assert torch.equal(out, ref), (engine, x.shape, k, st, p, ceil, cip, dov)
        checked += 1
    assert checked >= 90


def test_avg_pool_nchw_adds_zero_point_before_rounding():
    # window sum of centred codes 5 over 2 pixels: 2.5 + zo 1 = 3.5 -> rint 4 (not 2 + 1 = 3)
    x = torch.tensor([[[[3, 2]]]], dtype=torch.uint8) + 1  # codes 4, 3 with za 1: centred 3, 2
    out = qi.avg_pool2d(torch.cat([x, x], 1), 1.0, 1, (1, 2))  # C=2 keeps it NCHW
    assert out.flatten().tolist() == [4, 4]


def test_flatten_is_torch_flatten():
    x = torch.arange(24, dtype=torch.uint8).reshape(2, 3, 2, 2)
    assert torch.equal(qi.flatten(x), x.reshape(2, 12))


def test_onnx_add_on_int8_codes_uses_the_real_valued_formula_and_broadcasts():
    a = torch.arange(-128, 128, dtype=torch.int8).reshape(16, 16)
    b = torch.arange(-8, 8, dtype=torch.int8).reshape(1, 16) * 16
    f32 = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float32).double()  # scales as float32
    real = f32[0] * (a.double() - 3) + f32[1] * (b.double() + 2)
    expected = torch.round(real / f32[2] - 7).clamp(-128, 127).to(torch.int8)
    assert torch.equal(qi.add(a, 0.1, 3, b, 0.2, -2, 0.3, -7, backend="onnx"), expected)
