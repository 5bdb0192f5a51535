"""A quantized weight as a checkpoint stores it, in plain tensors: integer codes, scales,
zero points, the channel axis, the dtype and the qscheme torch recorded.

Two layouts lead here. A converted module (``convert`` / ``convert_fx``) saves a torch
quantized tensor; a reference module (``convert_to_reference_fx``) saves the fp32 weight
beside its qparams (``weight_scale``, ``weight_zero_point``, ``weight_axis``,
``weight_qscheme``, ``weight_dtype``) and quantizes it on the fly, so its codes are
recomputed here with :func:`qcal.qparams.quantize`, torch's own arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from qcal.qparams import quantize

__all__ = ["PER_CHANNEL", "QWeight"]

#: torch qschemes stored with one (scale, zero point) per channel
PER_CHANNEL = (
    torch.per_channel_affine,
    torch.per_channel_symmetric,
    torch.per_channel_affine_float_qparams,
)


def _name(value: Any) -> str:
    return str(value).removeprefix("torch.")


@dataclass(frozen=True)
class QWeight:
    """One quantized weight: ``w ≈ scale[c] × (codes − zero_point[c])`` along ``axis``.

    Attributes:
        codes: the integer codes (int64), shaped like the weight, e.g. (O, I, kh, kw).
        scales: one per channel along ``axis``, or a single value per tensor.
        zero_points: matching ``scales`` (floats only for ``per_channel_affine_float_qparams``).
        axis: the channel axis, None per tensor.
        dtype: "qint8", "quint8", ...
        qscheme: the qscheme torch recorded, e.g. "per_channel_affine".
    """

    codes: torch.Tensor
    scales: tuple[float, ...]
    zero_points: tuple[float, ...]
    axis: int | None
    dtype: str
    qscheme: str

    @property
    def shape(self) -> tuple[int, ...]:
        """The weight's shape, e.g. (out_channels, in_channels / groups, kh, kw)."""
        return tuple(self.codes.shape)

    @classmethod
    def from_qtensor(cls, q: torch.Tensor) -> QWeight:
        """Read a torch quantized tensor (as converted modules save their weights)."""
        if q.qscheme() in PER_CHANNEL:
            scales = q.q_per_channel_scales().tolist()
            zps = q.q_per_channel_zero_points().tolist()
            axis: int | None = int(q.q_per_channel_axis())
        else:
            scales, zps, axis = [q.q_scale()], [q.q_zero_point()], None
        codes = q.int_repr().to(torch.int64)
        return cls(codes, tuple(scales), tuple(zps), axis, _name(q.dtype), _name(q.qscheme()))

    @classmethod
    def from_reference(
        cls,
        weight: torch.Tensor,
        scale: torch.Tensor,
        zero_point: torch.Tensor,
        axis: torch.Tensor | int,
        qscheme: Any,
        dtype: Any,
    ) -> QWeight:
        """Quantize a reference module's fp32 weight with its stored qparams.

        Raises:
            ValueError: a dtype other than qint8 / quint8.
        """
        dtype_name = _name(dtype)
        if dtype_name not in ("qint8", "quint8"):
            raise ValueError(f"reference weight dtype {dtype_name!r}; expected qint8 or quint8")
        per_channel = qscheme in PER_CHANNEL
        ch = int(axis) if per_channel else None
        scales = scale.reshape(-1).to(torch.float32)
        zps = zero_point.reshape(-1).to(torch.int64)
        codes = quantize(
            weight.detach().float(),
            scales if per_channel else float(scales[0]),
            zps if per_channel else int(zps[0]),
            dtype_name,
            axis=ch,
        ).to(torch.int64)
        return cls(
            codes, tuple(scales.tolist()), tuple(zps.tolist()), ch, dtype_name, _name(qscheme)
        )
