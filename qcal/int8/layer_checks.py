"""What the packed layers accept: argument checks and the conv2d shapes a backend refuses.

Each check raises a ValueError / TypeError naming the bad value and what is accepted, with
torch's own wording where qcal mirrors one of torch's refusals. ``packed.py`` calls them
before any arithmetic; they hold no arithmetic of their own.
"""

from __future__ import annotations

import torch

__all__ = [
    "TORCH_BACKENDS",
    "check_activations",
    "check_linear_input",
    "checked_weights",
    "conv_geometry",
    "conv_out_shape",
    "fit_image",
    "out_dtype",
    "scalar",
]

TORCH_BACKENDS = ("fbgemm", "qnnpack", "x86")  # torch's engines: uint8 activations, int8 weights

Geometry = tuple  # ((sh, sw), (ph, pw), (dh, dw), groups)


def scalar(v, name: str, kind: type) -> float | int:
    """``v`` (a number or one-element tensor) as ``kind``."""
    t = torch.as_tensor(v)
    if t.numel() != 1:
        raise ValueError(f"{name} must be a single number, got {t.numel()} values")
    return kind(t.item())


def _pair(v, name: str) -> tuple[int, int]:
    t = (v, v) if isinstance(v, int) else tuple(int(i) for i in v)
    if len(t) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return t


def out_dtype(out_zero_point) -> torch.dtype:
    """The output dtype a zero point asks for: its own when a uint8/int8 tensor, else uint8."""
    if isinstance(out_zero_point, torch.Tensor) and out_zero_point.dtype in (torch.uint8, torch.int8):
        return out_zero_point.dtype
    return torch.uint8


def check_activations(x_q: torch.Tensor, backend: str) -> None:
    """TypeError unless ``x_q`` holds the activation dtype ``backend`` takes."""
    allowed = (torch.uint8,) if backend in TORCH_BACKENDS else (torch.uint8, torch.int8)
    if x_q.dtype not in allowed:
        names = " or ".join(str(d) for d in allowed)
        raise TypeError(f"x_q has dtype {x_q.dtype}; backend {backend!r} takes {names} activations")


def checked_weights(w_q, w_scale, w_zero_point, bias, backend):
    """(per-channel int64 zero points, w_scale, bias as float32/int32 or None), or an error."""
    allowed = (torch.int8,) if backend in TORCH_BACKENDS else (torch.int8, torch.uint8)
    if not isinstance(w_q, torch.Tensor) or w_q.dtype not in allowed:
        names = " or ".join(str(d) for d in allowed)
        got = getattr(w_q, "dtype", type(w_q).__name__)
        raise TypeError(f"w_q has dtype {got}; backend {backend!r} takes {names} weights")
    o = w_q.shape[0]
    if o == 0 or w_q.numel() == 0:  # torch's prepack crashes the process on such weights
        raise ValueError(f"w_q has shape {tuple(w_q.shape)}: weights need at least one output channel and input")
    zp = torch.as_tensor(w_zero_point).reshape(-1).to(torch.int64)
    if zp.numel() not in (1, o):
        raise ValueError(f"w_zero_point has {zp.numel()} entries; expected 1 or {o} (one per output channel)")
    info = torch.iinfo(w_q.dtype)
    if bool(((zp < info.min) | (zp > info.max)).any()):
        raise ValueError(f"w_zero_point {zp.tolist()[:8]} outside the {w_q.dtype} range")
    scale = torch.as_tensor(w_scale)
    if scale.dim() == 1 and scale.numel() != o:
        raise ValueError(f"w_scale has {scale.numel()} entries; expected {o} (one per output channel)")
    if scale.dim() > 1:
        raise ValueError(f"w_scale must be a number or a 1-D tensor, got shape {tuple(scale.shape)}")
    if bias is not None:
        bias = torch.as_tensor(bias)
        if bias.dtype == torch.float64:
            bias = bias.float()
        if bias.dtype not in (torch.float32, torch.int32) or bias.shape != (o,):
            raise ValueError(f"bias must be float32 or int32 of shape ({o},), got {bias.dtype} {tuple(bias.shape)}")
    return zp.expand(o).clone(), w_scale, bias


def conv_geometry(w_q: torch.Tensor, stride, padding, dilation, groups: int) -> Geometry:
    """The checked ((stride), (padding), (dilation), groups) of a conv2d with weights ``w_q``."""
    if groups < 1 or w_q.shape[0] % groups:
        raise ValueError(f"groups={groups} must be >= 1 and divide the {w_q.shape[0]} output channels")
    geometry = (_pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation"), int(groups))
    # torch crashes on stride 0, answers dilation 0 and negative padding with meaningless
    # shapes (or an internal assert under qnnpack): qcal refuses all three
    for name, values, low in (("stride", geometry[0], 1), ("padding", geometry[1], 0), ("dilation", geometry[2], 1)):
        if min(values) < low:
            raise ValueError(f"{name} {values} must be >= {low} in both dimensions")
    return geometry


def conv_out_shape(x_shape, w_shape, geometry: Geometry, *, truncate: bool = False) -> tuple[int, ...]:
    """(N, O, H', W'); ``truncate``: torch's C division, which rounds a negative
    numerator toward zero (a kernel overhanging the image by less than a stride)."""
    stride, padding, dilation = geometry[0], geometry[1], geometry[2]
    out = [x_shape[0], w_shape[0]]
    for i in range(2):
        s, p, d, k = stride[i], padding[i], dilation[i], w_shape[2 + i]
        num = x_shape[2 + i] + 2 * p - d * (k - 1) - 1
        out.append(max((int(num / s) if truncate else num // s) + 1, 0))
    return tuple(out)


def check_linear_input(x_q: torch.Tensor, w_q: torch.Tensor, backend: str) -> None:
    """ValueError unless ``x_q`` is (..., K) with the weights' K (rank >= 2 on torch's engines)."""
    if x_q.dim() < 2 and backend in TORCH_BACKENDS:
        raise ValueError(f"x_q has shape {tuple(x_q.shape)}; backend {backend!r} refuses "
                         "linear inputs of rank < 2 (torch: input tensor rank should be >= 2)")
    if x_q.shape[-1] != w_q.shape[1]:
        raise ValueError(f"x_q has {x_q.shape[-1]} features, weights expect {w_q.shape[1]}")


def fit_image(x_q: torch.Tensor, x_zero_point, w_q: torch.Tensor, geometry: Geometry, backend: str) -> torch.Tensor:
    """``x_q`` as the backend reads it, or ValueError where the backend refuses it.

    torch's engines answer an empty batch (N = 0) with an empty output and refuse an
    empty image or an output with no rows or columns. FBGEMM sizes the output with C's
    truncating division, so a kernel that overhangs the last row or column by less than
    a stride still gives an output, read from pixels past the image that its im2col
    fills with the zero point; QNNPACK crashes the process there (segfault), qcal refuses.
    """
    if x_q.dim() != 4 or x_q.shape[1] != w_q.shape[1] * geometry[3]:
        raise ValueError(
            f"x_q shape {tuple(x_q.shape)} does not fit weights {tuple(w_q.shape)} with groups={geometry[3]}"
        )
    if x_q.shape[0] == 0:
        return x_q
    if x_q.shape[2] == 0 or x_q.shape[3] == 0:
        raise ValueError(
            f"x_q has an empty image {tuple(x_q.shape[2:])}: input dimensions must be non-zero "
            f"(QNNPACK's check; qcal refuses it on every backend)"
        )
    floor = conv_out_shape(x_q.shape, w_q.shape, geometry)
    trunc = conv_out_shape(x_q.shape, w_q.shape, geometry, truncate=True)
    if min(floor[2:]) > 0:
        return x_q
    (sh, sw), (ph, pw), (dh, dw), _ = geometry
    kh, kw = w_q.shape[2:]
    if backend == "fbgemm" and min(trunc[2:]) > 0:
        need_h = (trunc[2] - 1) * sh + dh * (kh - 1) + 1 - x_q.shape[2] - 2 * ph
        need_w = (trunc[3] - 1) * sw + dw * (kw - 1) + 1 - x_q.shape[3] - 2 * pw
        za = scalar(x_zero_point, "x_zero_point", int)
        return torch.nn.functional.pad(x_q, (0, max(need_w, 0), 0, max(need_h, 0)), value=za)
    crash = " (torch's qnnpack crashes on this layer)" if min(trunc[2:]) > 0 else ""
    raise ValueError(
        f"backend {backend!r} refuses this conv2d: each dimension of output tensor "
        f"should be greater than 0 (input {tuple(x_q.shape[2:])}, padding {(ph, pw)}, "
        f"kernel {(kh, kw)}, dilation {(dh, dw)}: the kernel does not "
        f"fit the padded input){crash}"
    )
