"""One layer's requantization numbers per channel, and how to name one of its output elements.

``requant_table`` lists, per output channel, ``requant_scale = input_scale * weight_scale /
output_scale`` and the multiplier each backend actually uses; ``element_grid`` /
``element_index`` / ``channel_of`` address one output element of a conv or linear layer.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from qcal.int8.common.requant import Requant, requant_multipliers
from qcal.schemes import BACKENDS

__all__ = ["channel_of", "channel_requant", "element_grid", "element_index", "layer_requant", "pick",
           "requant_table"]


def layer_requant(layer: Any, backend: str) -> Requant:
    """The layer's Requant on ``backend``, with weight scales passed as the engine passes them."""
    sw = float(layer.weight_scale) if layer.weight_scale.numel() == 1 else layer.weight_scale
    return requant_multipliers(layer.input_scale, sw, layer.output_scale, layer.bias, backend=backend)


def pick(t: torch.Tensor, c: int) -> torch.Tensor:
    """Channel ``c`` of a per-channel vector, or its single entry when per tensor."""
    t = t.reshape(-1)
    return t[c] if t.numel() > 1 else t[0]


@torch.no_grad()
def requant_table(layer: Any, backends: tuple[str, ...] = BACKENDS) -> pd.DataFrame:
    """Per output channel: the scales, ``requant_scale`` (float64) and each backend's numbers.

    Args:
        layer: a ``qcal.calibration.model.QuantLayer`` (input/weight/output scales and the float bias).
        backends: the flavours to list.

    Returns:
        Columns channel, input_scale, weight_scale, weight_zero_point, output_scale,
        requant_scale, then per
        backend ``<backend>_multiplier`` (float32, as that backend computes it), and
        q31_multiplier, q31_shift (gemmlowp/TFLite: ``m ~= q * 2^(shift-31)``).
    """
    n = int(layer.weight_q.shape[0])
    sw = layer.weight_scale.reshape(-1).double().expand(n)
    zw = layer.weight_zero_point.reshape(-1).long().expand(n)
    df = pd.DataFrame({
        "channel": range(n),
        "input_scale": float(layer.input_scale),
        "weight_scale": sw.numpy(),
        "weight_zero_point": zw.numpy(),
        "output_scale": float(layer.output_scale),
    })
    df["requant_scale"] = df["input_scale"] * df["weight_scale"] / df["output_scale"]
    for backend in backends:
        rq = layer_requant(layer, backend)
        df[f"{backend}_multiplier"] = rq.multiplier.double().expand(n).numpy() \
            if rq.multiplier.numel() == 1 else rq.multiplier.double().numpy()
        if backend == "q31":
            df["q31_multiplier"] = rq.q31_multiplier.expand(n).numpy() if rq.q31_multiplier.numel() == 1 \
                else rq.q31_multiplier.numpy()
            df["q31_shift"] = rq.q31_shift.expand(n).numpy() if rq.q31_shift.numel() == 1 \
                else rq.q31_shift.numpy()
    return df


@torch.no_grad()
def channel_requant(layer: Any, backend: str, channel: int) -> dict[str, Any]:
    """One output channel's requantization numbers on ``backend`` (``requant_multipliers``).

    Returns:
        multiplier (float32 value as a float), q31_multiplier, q31_shift, q31_error, and
        bias_int32 (None when the backend keeps a float bias or there is none).
    """
    rq = layer_requant(layer, backend)
    return {
        "multiplier": float(pick(rq.multiplier, channel)),
        "q31_multiplier": int(pick(rq.q31_multiplier, channel)),
        "q31_shift": int(pick(rq.q31_shift, channel)),
        "q31_error": float(pick(rq.q31_error, channel)),
        "bias_int32": None if rq.bias_int32 is None else int(pick(rq.bias_int32, channel)),
    }


def element_grid(output_shape: tuple[int, ...], kind: str) -> tuple[int, int, int]:
    """(channels, rows, columns) to pick one output element from (batch excluded).

    conv (N, C, H, W): (C, H, W). linear (N, ..., O): (O, rows = product of the middle
    dims, e.g. tokens, 1).
    """
    if kind == "conv":
        return int(output_shape[1]), int(output_shape[2]), int(output_shape[3])
    middle = 1
    for d in output_shape[1:-1]:
        middle *= int(d)
    return int(output_shape[-1]), middle, 1


def element_index(output_shape: tuple[int, ...], kind: str, channel: int, row: int = 0,
                  col: int = 0, sample: int = 0) -> tuple[int, ...]:
    """The index of one output element: (n, c, h, w) for conv, (n, ..., c) for linear.

    Raises:
        ValueError: an index outside the output (the message gives the valid ranges).
    """
    channels, rows, cols = element_grid(output_shape, kind)
    if not (0 <= channel < channels and 0 <= row < rows and 0 <= col < cols
            and 0 <= sample < output_shape[0]):
        raise ValueError(f"element (sample {sample}, channel {channel}, row {row}, column {col}) is "
                         f"outside the output of shape {tuple(output_shape)}: channels 0..{channels - 1}, "
                         f"rows 0..{rows - 1}, columns 0..{cols - 1}")
    if kind == "conv":
        return (sample, channel, row, col)
    middle = tuple(int(i) for i in torch.unravel_index(torch.tensor(row), output_shape[1:-1])) \
        if len(output_shape) > 2 else ()
    return (sample, *middle, channel)


def channel_of(index: tuple[int, ...], kind: str) -> int:
    """The output channel of an element index (axis 1 for conv, the last axis for linear)."""
    return int(index[1] if kind == "conv" else index[-1])


