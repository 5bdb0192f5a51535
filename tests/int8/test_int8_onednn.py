"""torch's x86 engine: its FBGEMM/oneDNN dispatch and oneDNN's requantization.

On a CPU without VNNI torch's x86 engine runs FBGEMM everywhere (the kernel sweep in
test_int8_kernels.py runs it), and oneDNN's arithmetic is checked against ``engine="onednn"``,
which runs the same prepack/requant code on oneDNN's kernels for that CPU. On an AVX512-VNNI CPU
the x86 engine sends convolutions to oneDNN itself and the sweep checks that route; the tests
that need it skip elsewhere, naming VNNI. One oneDNN defect measured on such a CPU is handled
here: one-column outputs at a column stride above 1 (qcal's sums avoid it, its x86 flavour
refuses those layers on the oneDNN route).
"""

from __future__ import annotations

import random

import pytest
import torch
from cpu_matrix import skip_reason

import qcal.int8 as qi
from qcal.int8.backends.onednn import x86_uses_onednn
from qcal.int8.common.onednn_sums import _onednn_conv_pack, _onednn_padded_conv, onednn_exact
from qcal.int8.cpu.flags import cpu_flags


def test_x86_sends_symmetric_convs_with_few_groups_to_onednn_on_avx512_vnni_only():
    assert x86_uses_onednn(0, 1, "avx512_vnni") and x86_uses_onednn(torch.zeros(8), 100, "avx512_vnni_ymm")
    assert not x86_uses_onednn(0, 101, "avx512_vnni")  # more than 100 groups: FBGEMM
    assert not x86_uses_onednn(torch.tensor([0, 3]), 1, "avx512_vnni")  # asymmetric weights
    assert not x86_uses_onednn(0, 1, "avx512") and not x86_uses_onednn(0, 1, "avx2")


def test_onednn_adds_the_zero_point_before_rounding():
    # acc 20, S = 0.5*0.25 = 0.125, d = 1: y = 2.5; oneDNN rint(2.5 + 3) = 6, FBGEMM rint(2.5) + 3 = 5
    x = torch.tensor([[[[20]]]], dtype=torch.uint8)
    w = torch.tensor([[[[1]]]], dtype=torch.int8)
    args = (x, 0.5, 0, w, 0.25, 0, None, 1.0, 3)
    vnni = qi.conv2d_detailed(*args, backend="x86", isa="avx512_vnni")
    assert vnni.out.item() == 6 and vnni.requant.backend == "onednn"
    assert qi.conv2d(*args, backend="x86", isa="avx2").item() == 5
    assert qi.linear(x[0, 0], 0.5, 0, w[0, 0], 0.25, 0, None, 1.0, 3, backend="x86", isa="avx512_vnni").item() == 5


def test_onednn_scales_pass_through_torchs_reciprocals():
    # 1/f32(1/0.1) = 0.1 in float32 rounding differs from f32(0.1) by nothing here, but
    # 1/f32(1/f32(1/3)) is not f32(1/3): oneDNN multiplies by the twice-inverted value
    rq = qi.requant_multipliers(0.1, torch.tensor([0.5]), 3.0, backend="onednn")
    one = torch.tensor(1.0)
    assert rq.dst_multiplier == one / (one / torch.tensor(1 / 3.0))
    assert rq.act_times_w_scale.item() == (one / torch.tensor(1 / 0.1)).item() * 0.5


def _case(rng: random.Random, g: torch.Generator):
    c = rng.choice([3, 8, 16])
    groups = rng.choice([1, 1, c]) if c > 3 else 1
    o = rng.choice([8, 16]) if groups == 1 else c
    k = rng.choice([1, 3])
    x = torch.randint(0, 128, (2, c, 9, 9), generator=g, dtype=torch.uint8)  # no int16 saturation
    w = torch.randint(-127, 128, (o, c // groups, k, k), generator=g, dtype=torch.int8)
    if rng.random() < 0.5:  # powers of two: exact ties, where the zero point order shows
        sa, so = 2.0 ** -rng.randint(2, 5), 2.0 ** -rng.randint(-4, 2)
        sw = 2.0 ** -torch.randint(3, 8, (o,), generator=g).double()
    else:
        sa, so = rng.uniform(0.005, 0.1), rng.uniform(0.02, 2.0)
        sw = torch.rand(o, generator=g).double() * 0.02 + 0.001
    sw = sw if rng.random() < 0.5 else float(sw[0])
    bias = torch.randn(o, generator=g) * 3 if rng.random() < 0.7 else None
    return x, w, sa, sw, bias, so, rng.randint(0, 127), rng.randint(0, 255), k // 2, groups, rng.random() < 0.4


def _torch_onednn(x, w, sa, sw, bias, so, za, zo, pad, groups, relu):
    torch.backends.quantized.engine = "onednn"
    xq = torch._make_per_tensor_quantized_tensor(x, sa, za)
    if isinstance(sw, float):
        wq = torch._make_per_tensor_quantized_tensor(w, sw, 0)
    else:
        wq = torch._make_per_channel_quantized_tensor(w, sw, torch.zeros(w.shape[0], dtype=torch.long), 0)
    packed = torch.ops.quantized.conv2d_prepack(wq, bias, [1, 1], [pad, pad], [1, 1], groups)
    op = torch.ops.quantized.conv2d_relu if relu else torch.ops.quantized.conv2d
    return op(xq, packed, so, zo).int_repr()


@pytest.mark.skipif("onednn" not in torch.backends.quantized.supported_engines, reason="torch built without oneDNN")
def test_onednn_requant_matches_torchs_onednn_engine_bit_for_bit():
    rng, g = random.Random(5), torch.Generator().manual_seed(5)
    differing = values = ties = 0
    for _ in range(40):
        x, w, sa, sw, bias, so, za, zo, pad, groups, relu = case = _case(rng, g)
        ref = _torch_onednn(*case)
        ours = qi.conv2d(x, sa, za, w, sw, 0, bias, so, zo, padding=pad, groups=groups, relu=relu,
                         backend="x86", isa="avx512_vnni")
        fbgemm = qi.conv2d(x, sa, za, w, sw, 0, bias, so, zo, padding=pad, groups=groups, relu=relu,
                           backend="fbgemm", isa="avx512_vnni")
        differing += int((ours != ref).sum())
        ties += int((fbgemm != ref).sum())
        values += ref.numel()
    print(f"oneDNN flavour vs torch engine=onednn (this CPU's AVX2 kernels): {differing} of {values} values differ;"
          f" FBGEMM's rounding would differ in {ties}")
    assert differing == 0
    assert ties > 0  # the cases do reach the values where the two requantizations part


# (N, image, kernel, stride, dilation): sizes (H + 2p - d(k-1) - 1) / s + 1 in C's truncating division
ZERO_SIZED = [(1, (4, 10), 3, 1, 2), (2, (1, 4), 3, 2, 1), (3, (9, 1), 3, 2, 1), (2, (2, 2), 3, 1, 1)]
NEGATIVE = [(1, (1, 1), 3, 1, 1), (2, (1, 4), 5, 1, 1), (0, (1, 1), 3, 1, 1)]


def _torch_conv(engine, n, hw, k, stride, dilation):
    """(x codes, w codes, torch's output codes or its refusal's first line)."""
    g = torch.Generator().manual_seed(n + k)
    x = torch.randint(0, 256, (n, 8, *hw), generator=g, dtype=torch.uint8)
    w = torch.randint(-127, 128, (8, 8, k, k), generator=g, dtype=torch.int8)
    torch.backends.quantized.engine = engine
    wq = torch._make_per_tensor_quantized_tensor(w, 0.01, 0)
    packed = torch.ops.quantized.conv2d_prepack(wq, None, [stride] * 2, [0, 0], [dilation] * 2, 1)
    try:
        out = torch.ops.quantized.conv2d(torch._make_per_tensor_quantized_tensor(x, 0.05, 3), packed, 0.5, 7)
    except RuntimeError as err:
        return x, w, str(err).splitlines()[0]
    return x, w, out


@pytest.mark.skipif("onednn" not in torch.backends.quantized.supported_engines, reason="torch built without oneDNN")
@pytest.mark.parametrize(("n", "hw", "k", "stride", "dilation"), ZERO_SIZED)
def test_x86_via_onednn_answers_an_output_with_a_zero_size_with_an_empty_tensor(monkeypatch, n, hw, k, stride, dilation):
    # torch's oneDNN apply_impl: conv_output_size (C division), then `if (output.numel() == 0)
    # return output;`; FBGEMM checks "each dimension of output tensor should be greater than 0"
    _, _, fbgemm = _torch_conv("fbgemm", n, hw, k, stride, dilation)
    x, w, ref = _torch_conv("onednn", n, hw, k, stride, dilation)  # the same apply_impl as x86 on VNNI
    assert isinstance(fbgemm, str) and ref.numel() == 0
    monkeypatch.setenv("QCAL_CPU", "avx512_vnni")
    out = qi.conv2d(x, 0.05, 3, w, 0.01, 0, None, 0.5, 7, stride=stride, dilation=dilation, backend="x86")
    assert out.shape == ref.shape and out.dtype == ref.int_repr().dtype
    assert out.is_contiguous(memory_format=torch.channels_last)
    monkeypatch.setenv("QCAL_CPU", "avx2")  # FBGEMM's route: refused, as torch's fbgemm does
    with pytest.raises(ValueError, match="each dimension of output tensor should be greater than 0"):
        qi.conv2d(x, 0.05, 3, w, 0.01, 0, None, 0.5, 7, stride=stride, dilation=dilation, backend="x86")
    with pytest.raises(ValueError, match="each dimension"):  # asymmetric weights: FBGEMM even on VNNI
        qi.conv2d(x, 0.05, 3, w, 0.01, 1, None, 0.5, 7, stride=stride, dilation=dilation, backend="x86",
                  isa="avx512_vnni")


@pytest.mark.skipif("onednn" not in torch.backends.quantized.supported_engines, reason="torch built without oneDNN")
@pytest.mark.parametrize(("n", "hw", "k", "stride", "dilation"), NEGATIVE)
@pytest.mark.parametrize("cpu", ["avx2", "avx512_vnni"])
def test_a_negative_output_size_is_refused_with_torchs_words(monkeypatch, cpu, n, hw, k, stride, dilation):
    x, w, ref = _torch_conv("onednn", n, hw, k, stride, dilation)
    assert isinstance(ref, str) and "negative dimension" in ref
    monkeypatch.setenv("QCAL_CPU", cpu)
    words = "negative dimension" if cpu == "avx512_vnni" or n == 0 else "each dimension"
    with pytest.raises(ValueError, match=words):
        qi.conv2d(x, 0.05, 3, w, 0.01, 0, None, 0.5, 7, stride=stride, dilation=dilation, backend="x86")


@pytest.mark.parametrize("engine", ["fbgemm", "qnnpack", "x86"])
def test_an_empty_batch_gets_torchs_truncated_output_size(engine):
    # (2 - 3) / 2 + 1 = 1 in C, where floor division gives 0: every engine answers (0, 8, 1, 1)
    for hw, stride in (((2, 2), 2), ((11, 2), 2), ((2, 5), 1)):
        x, w, ref = _torch_conv(engine, 0, hw, 3, stride, 1)
        out = qi.conv2d(x, 0.05, 3, w, 0.01, 0, None, 0.5, 7, stride=stride, backend=engine)
        assert out.shape == ref.shape, (hw, stride)


# one-column outputs at a column stride above 1 (more than one row): (h, w, kernel, stride, dilation)
ONE_COLUMN = [((5, 3), (1, 2), (1, 2), (1, 1)), ((7, 4), (1, 2), (1, 2), (1, 2)), ((5, 5), (1, 2), (1, 3), (1, 2)),
              ((6, 4), (3, 3), (1, 2), (1, 1))]


def _one_column_case(hw, k, groups=1):
    g = torch.Generator().manual_seed(hw[0] * 10 + hw[1])
    x = torch.randint(0, 256, (2, 8, *hw), generator=g, dtype=torch.uint8)
    w = torch.randint(-64, 65, (8, 8 // groups, *k), generator=g, dtype=torch.int8)  # |w| <= 64: exact on any oneDNN
    return x, w


def _exact_out(x, w, stride, dilation, groups, sa=0.05, za=3, sw=0.01, so=0.5, zo=7):
    acc = torch.nn.functional.conv2d(x.double() - za, w.double(), None, stride, 0, dilation, groups)
    return torch.clamp(torch.round(acc * (sa * sw / so)) + zo, 0, 255)


@pytest.mark.skipif(not hasattr(torch.ops.onednn, "qconv2d_pointwise"), reason="torch built without oneDNN int8 ops")
@pytest.mark.parametrize(("hw", "k", "stride", "dilation"), ONE_COLUMN)
@pytest.mark.parametrize("groups", [1, 8])
def test_onednn_sums_of_a_one_column_output_are_exact(hw, k, stride, dilation, groups):
    # qcal's oneDNN accumulator computes a one-wide output at stride 1 on the columns its window
    # reads (onednn_sums._one_wide): the exact sum on every CPU, the AVX-512 kernels included
    x, w = _one_column_case(hw, k, groups)
    geometry = (stride, (0, 0), dilation, groups)
    xl = x.contiguous(memory_format=torch.channels_last)
    acc = _onednn_padded_conv(xl, 3, _onednn_conv_pack(w, geometry), (8, *k), None, geometry)
    want = torch.nn.functional.conv2d(x.double() - 3, w.double(), None, stride, 0, dilation, groups)
    assert acc.shape == want.shape and acc.shape[2:] == (acc.shape[2], 1) and acc.shape[2] > 1
    assert int((acc.double() != want).sum()) == 0


@pytest.mark.parametrize(("hw", "k", "stride", "dilation"), ONE_COLUMN)
@pytest.mark.parametrize("cpu", ["avx2", "avx512_vnni"])
def test_a_one_column_output_at_a_column_stride_is_refused_on_onednn_only(monkeypatch, hw, k, stride, dilation, cpu):
    monkeypatch.setenv("QCAL_CPU", cpu)
    x, w = _one_column_case(hw, k)
    args = (x, 0.05, 3, w, 0.01, 0, None, 0.5, 7)
    if cpu == "avx512_vnni":  # x86 hands the layer to oneDNN there
        with pytest.raises(ValueError, match=r"oneDNN on this CPU\) refuses .* one column wide at a column stride"):
            qi.conv2d(*args, stride=stride, dilation=dilation, backend="x86")
    else:
        out = qi.conv2d(*args, stride=stride, dilation=dilation, backend="x86")
        assert torch.equal(out.double(), _exact_out(x, w, stride, dilation, 1))
    for backend in ("fbgemm", "qnnpack", "onnx"):  # every other flavour: answered, exactly
        out = qi.conv2d(*args, stride=stride, dilation=dilation, backend=backend)
        assert torch.equal(out.double(), _exact_out(x, w, stride, dilation, 1)), backend


@pytest.mark.skipif("x86" not in torch.backends.quantized.supported_engines, reason="torch built without x86")
def test_torchs_x86_engine_gets_one_column_outputs_wrong_with_amx(monkeypatch):
    # the premise of the refusal above, measured: where torch's x86 engine runs oneDNN's AMX
    # kernels (an Intel Xeon with AMX-INT8), some one-column outputs at a column stride differ
    # from the exact result. If a torch release fixes it, this fails and the refusal can go. On
    # an AMD EPYC with AVX-512-VNNI and no AMX every one of them was exact (the refusal's doc)
    if not onednn_exact():
        pytest.skip(skip_reason("avx512_vnni") + " (torch's x86 engine runs oneDNN on VNNI CPUs only)")
    if "amx_int8" not in cpu_flags():
        pytest.skip("needs AMX-INT8 (oneDNN's AMX convolution kernels): this CPU has AVX-512-VNNI without AMX")
    differing = 0
    for hw, k, stride, dilation in ONE_COLUMN:
        x, w = _one_column_case(hw, k)
        torch.backends.quantized.engine = "x86"
        wq = torch._make_per_tensor_quantized_tensor(w, 0.01, 0)
        packed = torch.ops.quantized.conv2d_prepack(wq, None, list(stride), [0, 0], list(dilation), 1)
        out = torch.ops.quantized.conv2d(torch._make_per_tensor_quantized_tensor(x, 0.05, 3), packed, 0.5, 7)
        differing += int((out.int_repr().double() != _exact_out(x, w, stride, dilation, 1)).sum())
    print(f"torch x86 (oneDNN, AMX) one-column outputs: {differing} values differ from the exact result")
    assert differing > 0
