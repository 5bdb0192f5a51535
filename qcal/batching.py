"""Batches as users hand them over: a Tensor, a tuple of positional args, or a dict of kwargs.

``call_model`` runs a model on any of the three forms; ``as_eval_batches`` turns eval data
into a list of (inputs, labels or None) pairs and checks it on the way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["as_eval_batches", "call_model", "count_nonfinite"]


def call_model(model: torch.nn.Module, inputs: Any) -> torch.Tensor:
    """``model(x)``, ``model(*args)`` or ``model(**kwargs)`` depending on the batch form."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, tuple | list):
        return model(*inputs)
    return model(inputs)


def count_nonfinite(inputs: Any) -> int:
    """How many NaN or Inf values the floating-point tensors of a batch hold."""
    if isinstance(inputs, dict):
        return sum(count_nonfinite(v) for v in inputs.values())
    if isinstance(inputs, tuple | list):
        return sum(count_nonfinite(v) for v in inputs)
    if isinstance(inputs, torch.Tensor) and inputs.is_floating_point():
        if inputs.numel() == 0:
            return 0
        lo, hi = torch.aminmax(inputs)  # one pass; NaN propagates, Inf shows in the extremes
        if bool(torch.isfinite(lo)) and bool(torch.isfinite(hi)):
            return 0
        return int((~torch.isfinite(inputs)).sum())
    return 0


def as_eval_batches(eval_data: Iterable[Any]) -> list[tuple[Any, torch.Tensor | None]]:
    """Eval data as a list of (inputs, labels or None).

    Accepts an iterable of ``(inputs, labels)`` pairs (labels may be None), or an iterable of
    bare inputs (no labels), or a single ``(inputs_tensor, labels_tensor)`` pair.

    Raises:
        ValueError: empty data, or NaN/Inf values in the inputs (the message says how many).
    """
    if isinstance(eval_data, torch.Tensor):
        eval_data = [(eval_data, None)]
    elif (isinstance(eval_data, tuple) and len(eval_data) == 2
          and isinstance(eval_data[0], torch.Tensor)
          and (eval_data[1] is None or isinstance(eval_data[1], torch.Tensor))
          and (eval_data[1] is None or eval_data[1].dim() == 1)):
        eval_data = [eval_data]
    batches: list[tuple[Any, torch.Tensor | None]] = []
    for item in eval_data:
        if isinstance(item, tuple | list) and len(item) == 2 and (
                item[1] is None or (isinstance(item[1], torch.Tensor) and not item[1].is_floating_point())):
            inputs, labels = item
        else:
            inputs, labels = item, None
        batches.append((inputs, None if labels is None else torch.as_tensor(labels)))
    if not batches:
        raise ValueError("eval data is empty: pass an iterable of (inputs, labels) batches")
    bad = sum(count_nonfinite(inputs) for inputs, _ in batches)
    if bad:
        raise ValueError(f"eval data holds {bad} NaN or Inf values; clean or drop those samples")
    return batches
