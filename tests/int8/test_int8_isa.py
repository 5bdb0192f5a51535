"""The x86 instruction set qcal assumes: flags, QCAL_CPU, non-x86 machines, and torch's kernels.

Expected accumulators are hand-worked int16 pair sums, independent of the emulation:
255*127 + 255*127 = 64770 saturates to 32767 under ``vpmaddubsw``; ``vpdpbusd`` keeps 64770.
Checked against torch on real hardware: AVX2 (this CI machine, ``test_every_family_matches_
torch_with_full_range_activations``) and AVX512-VNNI (the machine earlier sessions ran on).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import qcal.int8 as qi
from qcal.int8.common.saturation import fbgemm_conv_path
from qcal.int8.cpu import isa as isa_mod
from qcal.int8.cpu.isa import assumed_cpu, instruction_set_from_flags, saturates

AVX2 = {"avx", "avx2", "fma"}
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512dq", "avx512vl"}
FLAG_SETS = {  # name -> (flags, FBGEMM's ISA, GEMM pair 255*127*2 as accumulated)
    "avx2": (AVX2, "avx2", 32767),
    "avx2+avx_vnni": (AVX2 | {"avx_vnni"}, "avx2", 32767),  # AVX-VNNI alone: FBGEMM runs AVX2
    "avx512": (AVX512, "avx512", 32767),
    "avx512+avx512_vnni": (AVX512 | {"avx512_vnni"}, "avx512_vnni", 64770),
}


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("QCAL_CPU", raising=False)
    monkeypatch.delenv("FBGEMM_ENABLE_INSTRUCTIONS", raising=False)
    monkeypatch.delenv("FBGEMM_ENABLE_AVX512_256", raising=False)


def _linux_with(monkeypatch, flags):
    monkeypatch.setattr(isa_mod, "_linux_x86", lambda: True)
    monkeypatch.setattr(isa_mod, "cpu_flags", lambda: frozenset(flags))


@pytest.mark.parametrize("name", FLAG_SETS)
def test_each_flag_set_gives_fbgemms_instruction_set(monkeypatch, no_env, name):
    flags, expected, _ = FLAG_SETS[name]
    _linux_with(monkeypatch, flags)
    assert assumed_cpu().isa == expected and assumed_cpu().source == "/proc/cpuinfo"
    assert instruction_set_from_flags(flags, avx512_256=True) == {"avx512": "avx512_ymm"}.get(
        expected, expected.replace("avx512_vnni", "avx512_vnni_ymm"))


@pytest.mark.parametrize("name", FLAG_SETS)
def test_linear_pair_sum_per_flag_set(monkeypatch, no_env, name):
    flags, _, expected = FLAG_SETS[name]
    _linux_with(monkeypatch, flags)
    x = torch.tensor([[255, 255]], dtype=torch.uint8)
    w = torch.tensor([[127, 127]], dtype=torch.int8)
    r = qi.linear_detailed(x, 1.0, 0, w, 1.0, 0, None, 2.0**20, 0)
    assert r.acc.item() == expected
    assert r.saturated_pairs == (expected == 32767)


@pytest.mark.parametrize("name", FLAG_SETS)
def test_im2col_and_groupwise_pair_channels_of_a_tap_per_flag_set(monkeypatch, no_env, name):
    flags, _, expected = FLAG_SETS[name]
    _linux_with(monkeypatch, flags)
    # 2 channels per group, 3x3, pad 1: groupwise on every ISA here (8 groups fill 64 bytes).
    # Centre pixel, group 0: 9 taps x pair (c0, c1) = 255*127*2 each -> 9 pairs.
    x = torch.full((1, 16, 3, 3), 255, dtype=torch.uint8)
    w = torch.zeros(16, 2, 3, 3, dtype=torch.int8)
    w[0] = 127
    r = qi.conv2d_detailed(x, 1.0, 0, w, 1.0, 0, None, 2.0**20, 0, padding=1, groups=8)
    assert fbgemm_conv_path(16, tuple(w.shape), ((1, 1), (1, 1), (1, 1), 8)) == "groupwise"
    assert r.acc[0, 0, 1, 1].item() == 9 * expected


@pytest.mark.parametrize("name", FLAG_SETS)
def test_depthwise_saturates_on_every_flag_set(monkeypatch, no_env, name):
    _linux_with(monkeypatch, FLAG_SETS[name][0])
    # 3x3 taps all 127 on codes 255: pairs (t0,t1) (t2,t3) (t4,t5) (t6,t7) -> 32767 each,
    # t8 alone 255*127 = 32385; centre pixel = 4*32767 + 32385 = 163453 (exact: 291465)
    x = torch.full((1, 8, 3, 3), 255, dtype=torch.uint8)
    w = torch.full((8, 1, 3, 3), 127, dtype=torch.int8)
    r = qi.conv2d_detailed(x, 1.0, 0, w, 1.0, 0, None, 2.0**20, 0, padding=1, groups=8)
    assert r.acc[0, 0, 1, 1].item() == 4 * 32767 + 32385


def test_qcal_cpu_overrides_the_flags_and_the_argument_overrides_both(monkeypatch, no_env):
    _linux_with(monkeypatch, FLAG_SETS["avx512+avx512_vnni"][0])
    monkeypatch.setenv("QCAL_CPU", "AVX2")
    assert assumed_cpu() == qi.AssumedCpu("avx2", "avx2", "QCAL_CPU")
    x = torch.tensor([[255, 255]], dtype=torch.uint8)
    w = torch.tensor([[127, 127]], dtype=torch.int8)
    assert qi.linear_detailed(x, 1.0, 0, w, 1.0, 0, None, 2.0**20, 0).acc.item() == 32767
    assert qi.linear_detailed(x, 1.0, 0, w, 1.0, 0, None, 2.0**20, 0, isa="avx512_vnni").acc.item() == 64770
    assert assumed_cpu("avx512").source == "argument"


def test_emulating_a_cpu_holds_in_its_context_only_and_over_qcal_cpu(monkeypatch, no_env):
    _linux_with(monkeypatch, FLAG_SETS["avx2"][0])
    monkeypatch.setenv("QCAL_CPU", "avx2")
    client = assumed_cpu("avx512_vnni")  # what a Dask client would send with its jobs
    x = torch.tensor([[255, 255]], dtype=torch.uint8)
    w = torch.tensor([[127, 127]], dtype=torch.int8)
    with isa_mod.emulating(client):
        assert assumed_cpu() == client and assumed_cpu("avx2").isa == "avx2"  # an argument still wins
        assert qi.linear_detailed(x, 1.0, 0, w, 1.0, 0, None, 2.0**20, 0).acc.item() == 64770
        with ThreadPoolExecutor(1) as pool:  # another thread has its own context: the environment's
            assert pool.submit(lambda: assumed_cpu().isa).result() == "avx2"
    assert assumed_cpu().source == "QCAL_CPU"
    assert qi.linear_detailed(x, 1.0, 0, w, 1.0, 0, None, 2.0**20, 0).acc.item() == 32767
    with pytest.raises(TypeError, match="cpu must be an AssumedCpu"):
        isa_mod.emulating("avx2").__enter__()


def test_unknown_instruction_sets_are_refused_by_name(monkeypatch, no_env):
    monkeypatch.setenv("QCAL_CPU", "avx10")
    with pytest.raises(ValueError, match=r"QCAL_CPU 'avx10'.*avx2, avx512"):
        assumed_cpu()
    with pytest.raises(ValueError, match="isa 'sse'"):
        qi.linear(torch.zeros(1, 2, dtype=torch.uint8), 1.0, 0, torch.zeros(1, 2, dtype=torch.int8),
                  1.0, 0, None, 1.0, 0, isa="sse")


@pytest.mark.parametrize(("system", "machine"), [("darwin", "arm64"), ("linux", "aarch64"), ("darwin", "x86_64"),
                                                 ("win32", "AMD64")])
def test_off_linux_x86_qcal_emulates_an_avx2_cpu_unless_told(monkeypatch, no_env, system, machine):
    monkeypatch.setattr(isa_mod.sys, "platform", system)
    monkeypatch.setattr(isa_mod.platform, "machine", lambda: machine)
    assert assumed_cpu() == qi.AssumedCpu("avx2", "avx2", "default")
    assert "emulated default" in assumed_cpu().describe()
    x = torch.tensor([[255, 255]], dtype=torch.uint8)
    w = torch.tensor([[127, 127]], dtype=torch.int8)
    assert qi.linear_detailed(x, 1.0, 0, w, 1.0, 0, None, 2.0**20, 0).acc.item() == 32767
    monkeypatch.setenv("QCAL_CPU", "avx512_vnni")
    assert qi.linear_detailed(x, 1.0, 0, w, 1.0, 0, None, 2.0**20, 0).acc.item() == 64770


def test_fbgemm_enable_instructions_lowers_the_gemm_kernels_only(monkeypatch, no_env):
    # fbgemmInstructionSet() honours it; the groupwise kernel asks cpuinfo directly
    _linux_with(monkeypatch, FLAG_SETS["avx512+avx512_vnni"][0])
    monkeypatch.setenv("FBGEMM_ENABLE_INSTRUCTIONS", "AVX2")
    cpu = assumed_cpu()
    assert (cpu.isa, cpu.gemm_isa) == ("avx512_vnni", "avx2")
    assert saturates("gemm", cpu) and saturates("im2col", cpu) and not saturates("groupwise", cpu)
    monkeypatch.setenv("FBGEMM_ENABLE_INSTRUCTIONS", "AVX512_E1")  # cannot raise an avx2 CPU
    _linux_with(monkeypatch, AVX2)
    assert assumed_cpu().gemm_isa == "avx2"


def _torch_layer(family, x, za, w, so, zo):
    xq = torch._make_per_tensor_quantized_tensor(x, 1.0, za)
    wq = torch._make_per_tensor_quantized_tensor(w, 1.0, 0)
    if family == "gemm":
        return torch.ops.quantized.linear(xq, torch.ops.quantized.linear_prepack(wq, None), so, zo).int_repr()
    k = w.shape[-1]
    groups = x.shape[1] // w.shape[1]
    pad = {"pointwise": 0}.get(family, k // 2)
    packed = torch.ops.quantized.conv2d_prepack(wq, None, [1, 1], [pad, pad], [1, 1], groups)
    return torch.ops.quantized.conv2d(xq, packed, so, zo).int_repr()


FAMILY_LAYERS = {  # family -> (input shape, weight shape)
    "gemm": ((3, 7, 64), (24, 64)),
    "pointwise": ((2, 24, 7, 7), (16, 24, 1, 1)),
    "im2col": ((2, 5, 9, 9), (8, 5, 3, 3)),
    "groupwise": ((2, 32, 9, 9), (32, 4, 3, 3)),
    "depthwise": ((2, 16, 9, 9), (16, 1, 5, 5)),
}


@pytest.mark.parametrize("family", FAMILY_LAYERS)
def test_every_family_matches_torch_with_full_range_activations(family):
    """On this machine's real CPU (AVX2 in CI: every family saturates) against torch's fbgemm."""
    torch.backends.quantized.engine = "fbgemm"
    g = torch.Generator().manual_seed(len(family))
    xs, ws = FAMILY_LAYERS[family]
    differing = saturated = 0
    for _ in range(3):
        x = torch.randint(0, 256, xs, generator=g, dtype=torch.uint8)
        w = torch.randint(-128, 128, ws, generator=g, dtype=torch.int8)
        za = int(torch.randint(0, 256, (1,), generator=g))
        run = qi.linear_detailed if family == "gemm" else qi.conv2d_detailed
        kw = {} if family == "gemm" else {"padding": _pad(family, ws), "groups": xs[1] // ws[1]}
        exact = run(x, 1.0, za, w, 1.0, 0, None, 1.0, 128, saturate=False, **kw)
        so = float(exact.acc.abs().max()) / 100  # fine enough that saturation errors show
        ours = run(x, 1.0, za, w, 1.0, 0, None, so, 128, **kw)
        if family != "gemm":
            assert qi.fbgemm_conv_path(xs[1], ws, ((1, 1), (kw["padding"],) * 2, (1, 1), kw["groups"])) == family
        differing += int((ours.out != _torch_layer(family, x, za, w, so, 128)).sum())
        saturated += ours.saturated_pairs
    print(f"{family} on {qi.assumed_cpu().describe()}: {differing} differing values, {saturated} saturated pairs")
    assert differing == 0
    assert (saturated > 0) == saturates(family)


def _pad(family: str, ws) -> int:
    return 0 if family == "pointwise" else ws[-1] // 2
