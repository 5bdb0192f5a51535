"""How far an int8 output is from its fp32 reference: SQNR, MSE, cosine, top-1 accuracy.

Sums run in float64 over every element, so a metric does not depend on how the evaluation
data was batched.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["ErrorAccumulator", "cosine", "top1_metric"]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    den = a.norm() * b.norm()
    if den == 0:
        return 1.0 if torch.equal(a, b) else 0.0
    return float(a @ b / den)


class ErrorAccumulator:
    """Running float64 sums for SQNR, MSE and cosine between a reference and its approximation."""

    def __init__(self) -> None:
        self.signal = self.noise = self.dot = self.out2 = 0.0
        self.n = 0

    def add(self, ref: torch.Tensor, out: torch.Tensor) -> None:
        ref, out = ref.double().flatten(), out.double().flatten()
        err = out - ref
        self.signal += float(ref @ ref)
        self.noise += float(err @ err)
        self.dot += float(ref @ out)
        self.out2 += float(out @ out)
        self.n += ref.numel()

    def sqnr_db(self) -> float:
        if self.noise == 0:
            return math.inf
        if self.signal == 0:
            return -math.inf
        return 10 * math.log10(self.signal / self.noise)

    def mse(self) -> float:
        return self.noise / max(self.n, 1)

    def cosine(self) -> float:
        den = math.sqrt(self.signal * self.out2)
        return self.dot / den if den else float(self.noise == 0)


def top1_metric(outputs: list[torch.Tensor], batches: list[tuple[Any, Any]]) -> tuple[str, float]:
    """("accuracy", top-1 accuracy) of ``outputs`` against the batches' labels; ("agreement", 1.0)
    when some batch has no labels (fp32 agrees with itself)."""
    if any(labels is None for _, labels in batches):
        return "agreement", 1.0
    correct = total = 0
    for out, (_, labels) in zip(outputs, batches, strict=True):
        pred = out.reshape(out.shape[0], -1).argmax(dim=1)
        correct += int((pred == labels.reshape(-1)).sum())
        total += pred.numel()
    return "accuracy", correct / max(total, 1)
