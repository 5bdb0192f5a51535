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


def _c_out_hw(x_shape, w_shape, geometry: Geometry) -> list[int]:
    """(H', W') as torch sizes them: C's truncating division, unclamped (may be negative)."""
    stride, padding, dilation = geometry[0], geometry[1], geometry[2]
    num = [x_shape[2 + i] + 2 * padding[i] - dilation[i] * (w_shape[2 + i] - 1) - 1 for i in range(2)]
    return [int(num[i] / stride[i]) + 1 for i in range(2)]


def _negative_dimension(x_q, w_q, out_hw: list[int], backend: str, route: str) -> ValueError:
    """torch's refusal of a negative output size (``at::empty``'s words)."""
    shape = [x_q.shape[0], w_q.shape[0], *out_hw]
    return ValueError(
        f"backend {backend!r}{route} refuses this conv2d: trying to create tensor with negative "
        f"dimension {min(out_hw)}: {shape} (torch sizes the output with C's truncating division; "
        f"the kernel is longer than the padded input {tuple(x_q.shape[2:])} by more than a stride)"
    )


def _overhang(x_q, w_q, geometry: Geometry, out_hw: list[int], backend: str, route: str) -> ValueError:
    """The refusal of a kernel whose last window runs past the padded input (see ``fit_image``)."""
    (sh, sw), (ph, pw), (dh, dw), _ = geometry
    kh, kw = w_q.shape[2:]
    past = [(out_hw[0] - 1) * sh + dh * (kh - 1) + 1 - x_q.shape[2] - 2 * ph,
            (out_hw[1] - 1) * sw + dw * (kw - 1) + 1 - x_q.shape[3] - 2 * pw]
    where = " and ".join(f"{n} {name}{'s' if n > 1 else ''}" for n, name in zip(past, ("row", "column"), strict=True)
                         if n > 0)
    return ValueError(
        f"backend {backend!r}{route} refuses this conv2d: its last kernel window overhangs the padded "
        f"input by {where} (input {tuple(x_q.shape[2:])}, padding {(ph, pw)}, kernel {(kh, kw)}, "
        f"stride {(sh, sw)}, dilation {(dh, dw)}): torch sizes the output {tuple(out_hw)} with C's "
        f"truncating division and computes that window from pixels past the image, which differ by "
        f"backend and CPU (FBGEMM on AVX2 reads the zero point there, on an AVX-512-VNNI Xeon it gave "
        f"values the zero point does not explain, QNNPACK reads memory outside the tensor and "
        f"crashes); qcal refuses it on every backend"
    )


def _one_column(x_q, w_q, geometry: Geometry, out_hw: list[int], backend: str) -> ValueError:
    """The refusal of a one-column output at a column stride above 1 on oneDNN (``fit_image``)."""
    return ValueError(
        f"backend {backend!r} (oneDNN on this CPU) refuses this conv2d: its output {tuple(out_hw)} is one "
        f"column wide at a column stride of {geometry[0][1]} (input {tuple(x_q.shape[2:])}, kernel "
        f"{tuple(w_q.shape[2:])}, stride {geometry[0]}): torch's x86 engine hands it to oneDNN on VNNI CPUs, "
        f"whose kernels return wrong sums for some such shapes on an Intel Xeon with AMX (deterministic; 130 of "
        f"981 random ones, every other shape exact; 0 of the 981 on an AMD EPYC with AVX-512-VNNI and no AMX) "
        f"and qcal cannot tell which shapes or which VNNI CPUs; at stride 1 along the width, or with the input "
        f"cropped to the kernel's columns, the same layer is exact"
    )


def fit_image(x_q: torch.Tensor, w_q: torch.Tensor, geometry: Geometry, backend: str, *,
              onednn: bool = False) -> torch.Tensor:
    """``x_q`` as the backend reads it, or ValueError where qcal or the backend refuses it.

    torch sizes the output with C's truncating division (``conv_output_size``, FBGEMM's
    ``conv_param_t``). Every engine answers an empty batch (N = 0) with an empty output and
    refuses a negative output size. With N > 0, ``onednn`` (torch's x86 engine handing the
    conv to oneDNN, ``onednn.py``) answers an output with a zero size with an empty tensor
    (``if (output.numel() == 0) return output``); FBGEMM and QNNPACK refuse it ("each
    dimension of output tensor should be greater than 0"). A kernel whose last window
    overhangs the padded input (by less than a stride, so the size truncates to >= 1) makes
    the backend compute from memory past the image: qcal refuses it everywhere. On oneDNN, an
    output one column wide (more than one row) at a column stride above 1 is refused too: its
    AVX-512 kernels get some of those wrong (``_one_column``). qcal also
    refuses an empty image on every backend (QNNPACK's check).
    """
    if x_q.dim() != 4 or x_q.shape[1] != w_q.shape[1] * geometry[3]:
        raise ValueError(
            f"x_q shape {tuple(x_q.shape)} does not fit weights {tuple(w_q.shape)} with groups={geometry[3]}"
        )
    out_hw = _c_out_hw(x_q.shape, w_q.shape, geometry)
    route = " (oneDNN on this CPU)" if onednn else ""
    if x_q.shape[0] == 0:  # nothing is read: answered with an empty output, unless a size is negative
        if min(out_hw) < 0:
            raise _negative_dimension(x_q, w_q, out_hw, backend, route)
        return x_q
    if x_q.shape[2] == 0 or x_q.shape[3] == 0:
        raise ValueError(
            f"x_q has an empty image {tuple(x_q.shape[2:])}: input dimensions must be non-zero "
            f"(QNNPACK's check; qcal refuses it on every backend)"
        )
    if min(conv_out_shape(x_q.shape, w_q.shape, geometry)[2:]) > 0:
        if onednn and out_hw[1] == 1 and out_hw[0] > 1 and geometry[0][1] > 1:
            raise _one_column(x_q, w_q, geometry, out_hw, backend)
        return x_q  # every window inside the padded input
    if onednn and min(out_hw) < 0:
        raise _negative_dimension(x_q, w_q, out_hw, backend, route)
    if onednn and min(out_hw) == 0:
        return x_q  # an empty output: oneDNN returns before computing anything
    if min(out_hw) <= 0:
        (ph, pw), (dh, dw), (kh, kw) = geometry[1], geometry[2], tuple(w_q.shape[2:])
        raise ValueError(
            f"backend {backend!r} refuses this conv2d: each dimension of output tensor "
            f"should be greater than 0 (input {tuple(x_q.shape[2:])}, padding {(ph, pw)}, "
            f"kernel {(kh, kw)}, dilation {(dh, dw)}: the kernel does not fit the padded input)"
        )
    raise _overhang(x_q, w_q, geometry, out_hw, backend, route)
