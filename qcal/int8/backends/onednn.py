"""torch's ``x86`` engine: when it hands a layer to oneDNN, and oneDNN's requantization.

Dispatch (torch's ``should_use_onednn_quant``, aten/src/ATen/native/quantized/cpu/
OnednnUtils.h, called by the conv prepack under ``engine="x86"``): a **convolution** goes to
oneDNN when the machine runs Linux, the CPU has AVX512-VNNI (``cpuinfo_has_x86_avx512vnni``),
``groups <= 100``, every weight zero point is 0 and there is no output padding; every other
conv, and every **linear** (``qlinear_prepack`` packs FBGEMM weights for x86), runs FBGEMM.
The CPU is ``qcal.int8.cpu.isa.assumed_cpu()`` (``QCAL_CPU`` emulates a Linux x86 machine).

oneDNN's arithmetic (exact int32 accumulator: ``vpdpbusd`` does not saturate), with the scales
as torch hands them over (``1/sa`` and ``1/so`` as float32, inverted again on the way in)::

    s_a   = f32(1 / f32(1/sa))                 # src scale
    S_j   = f32(s_a * sw_j)                    # per output channel
    d     = f32(1 / f32(1 / f32(1/so)))        # multiplier for the dst scale
    y     = f32(f32(acc * S_j) + b_j)          # float bias, added after scaling (no fma)
    out   = clamp(rint(f32(f32(y * d) + zo)))  # zero point added *before* rounding

ReLU is an eltwise post-op on ``y``; it gives the same codes as clamping at ``zo``.
Checked bit for bit against ``torch.ops.quantized.conv2d`` under ``engine="onednn"`` on this
project's AVX2 CPU (oneDNN's AVX2 kernels, activations <= 127 so that nothing saturates):
tests/int8/test_int8_onednn.py. The AVX512-VNNI and AMX kernels ``x86`` really dispatches to
were checked by the kernel sweeps and whole-model tests on an Intel Xeon with AMX (0 differing
values), where an output with a zero size is answered empty (``layer_checks.fit_image``).
"""

from __future__ import annotations

import torch

from qcal.int8.cpu.isa import AssumedCpu, assumed_cpu

__all__ = ["ONEDNN_MAX_GROUPS", "onednn_scales", "onednn_steps", "requantize_onednn", "x86_uses_onednn"]

#: torch sends convolutions with more groups than this to FBGEMM even on VNNI CPUs.
ONEDNN_MAX_GROUPS = 100


def x86_uses_onednn(w_zero_point: torch.Tensor | int, groups: int, cpu: str | AssumedCpu | None = None) -> bool:
    """Whether torch's ``x86`` engine runs this convolution with oneDNN (else FBGEMM).

    Args:
        w_zero_point: the weight zero point(s).
        groups: the conv's groups.
        cpu: an instruction set name, an ``AssumedCpu``, or None (``assumed_cpu()``).

    Example:
        >>> x86_uses_onednn(0, 1, "avx512_vnni"), x86_uses_onednn(0, 1, "avx2")
        (True, False)
    """
    c = cpu if isinstance(cpu, AssumedCpu) else assumed_cpu(cpu)
    symmetric = bool((torch.as_tensor(w_zero_point) == 0).all())
    return c.vnni and groups <= ONEDNN_MAX_GROUPS and symmetric


def onednn_scales(x_scale: float, w_scale: torch.Tensor, out_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(``S_j``, ``d``) as oneDNN receives them from torch (see the module doc).

    Example:
        >>> s, d = onednn_scales(0.5, torch.tensor([0.25]), 2.0)
        >>> s.tolist(), d.item()
        ([0.125], 0.5)
    """
    one = torch.tensor(1.0, dtype=torch.float32)
    s_a = one / torch.tensor(1.0 / float(x_scale), dtype=torch.float32)
    scale = s_a * torch.as_tensor(w_scale).to(torch.float32).reshape(-1)
    d = one / (one / torch.tensor(1.0 / float(out_scale), dtype=torch.float32))
    return scale, d


def requantize_onednn(acc: torch.Tensor, scale: torch.Tensor, d: torch.Tensor, bias: torch.Tensor | None,
                      zo: int) -> torch.Tensor:
    """``rint(f32(f32(f32(f32(acc*S) + b) * d) + zo)) - zo`` in float32 (clamping is the caller's).

    ``acc``, ``scale`` and ``bias`` arrive broadcastable (channel views). An int32 ``bias``
    (accumulator units) is added to ``acc`` before the float conversion.

    Example (a tie: zero point before rounding): acc 5, S 0.5, d 1, zo 1: 2.5 + 1 = 3.5 -> 4,
    minus zo -> 3 (FBGEMM would give rint(2.5) = 2).
        >>> requantize_onednn(torch.tensor([5]), torch.tensor([0.5]), torch.tensor(1.0), None, 1).tolist()
        [3.0]
    """
    if bias is not None and bias.dtype == torch.int32:
        acc, bias = acc.to(torch.int64) + bias.to(torch.int64), None
    y = acc.to(torch.float32) * scale  # vcvtdq2ps, then vmulps by the per-channel scale
    if bias is not None:
        y = y + bias.to(torch.float32)  # vaddps: bias after scaling, not fused
    y = y * d
    return torch.round(y + float(zo)) - zo  # f32 add of the zero point, then cvtps2dq (half to even)


def onednn_steps(acc: int, scale: torch.Tensor, d: torch.Tensor, bias: torch.Tensor | None,
                 zo: int) -> tuple[int, list[tuple[str, str, float | int]]]:
    """One element's oneDNN requantization as (step, formula, value) rows, and its value before clamping.

    Args:
        acc: the exact accumulator; ``scale`` ``S_j`` and ``bias`` ``b_j`` of its channel
            (one-element tensors); ``d`` and ``zo`` as in the module doc.
    """
    f32 = torch.float32
    t = torch.tensor(acc, dtype=f32) * scale.reshape(()).to(f32)
    rows: list[tuple[str, str, float | int]] = [
        ("scale of the accumulator", "S = f32(f32(1/f32(1/sa)) · sw)", scale.item()),
        ("scale", "f32(acc · S)", t.item())]
    if bias is not None:
        t = t + bias.reshape(()).to(f32)
        rows.append(("add float bias after scaling", "y = f32(acc·S + b)", t.item()))
    t = t * d.to(f32)
    rows += [("dst multiplier", "d = f32(1/f32(1/f32(1/so)))", d.item()), ("to output units", "f32(y · d)", t.item())]
    t = t + float(zo)
    v = int(torch.round(t))
    rows += [("add output zero point first", f"f32(· + zo ({zo}))", t.item()), ("round half to even", "rint(·)", v)]
    return v, rows
