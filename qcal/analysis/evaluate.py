"""One calibrated model scored on the evaluation data: the compare job an executor runs.

``evaluate_job`` takes only picklable values and returns plain frames, so any
``concurrent.futures.Executor`` can run it (threads or processes).
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import torch

from qcal.analysis.metrics import ErrorAccumulator

__all__ = ["LAYER_COLUMNS", "SAMPLE_COLUMNS", "evaluate_job"]

LAYER_COLUMNS = ["scheme", "backend", "layer", "kind", "sqnr_db", "mse", "cosine"]
SAMPLE_COLUMNS = ["scheme", "backend", "layer", "fp32", "int8_dequantized"]


def evaluate_job(
    qm: Any,
    eval_batches: list[tuple[Any, torch.Tensor | None]],
    fp32_outputs: list[torch.Tensor],
    *,
    layer_batches: int = 4,
    sample_size: int = 400,
    seed: int = 0,
) -> dict[str, pd.DataFrame]:
    """Evaluate one calibrated model: top-1 accuracy or agreement, per-layer errors, samples.

    Runs in whatever process the executor chooses, so it takes only picklable values and
    returns plain frames (without the scheme/backend columns' context beyond the model).

    Args:
        qm: a QuantizedModel.
        eval_batches: (inputs, labels or None) pairs.
        fp32_outputs: the float model's outputs for the same batches.
        layer_batches: how many batches feed the per-layer error (traces are heavier).
        sample_size: how many (fp32, int8) value pairs per layer go into ``samples``.
    """
    started = time.perf_counter()
    metric, value, out_acc = _score_outputs(qm, eval_batches, fp32_outputs)
    seconds = time.perf_counter() - started
    layers, samples = _layer_errors(qm, eval_batches[:layer_batches], sample_size, seed)
    summary = pd.DataFrame([{
        "scheme": qm.scheme.name, "backend": qm.backend, "metric": metric, "value": float(value),
        "cosine": out_acc.cosine(), "int8_bytes": int(qm.int8_bytes), "seconds": float(seconds),
    }])
    return {"summary": summary, "layers": layers, "samples": samples}


def _score_outputs(qm: Any, eval_batches: list[tuple[Any, Any]], fp32_outputs: list[torch.Tensor]
                   ) -> tuple[str, float, ErrorAccumulator]:
    """(metric, value, output error sums): accuracy when every batch is labelled, else agreement."""
    correct = agree = total = 0
    labelled = True
    out_acc = ErrorAccumulator()
    for (inputs, labels), ref in zip(eval_batches, fp32_outputs, strict=True):
        out = qm(inputs)
        out_acc.add(ref, out)
        pred = out.reshape(out.shape[0], -1).argmax(dim=1)
        agree += int((pred == ref.reshape(ref.shape[0], -1).argmax(dim=1)).sum())
        total += pred.numel()
        if labels is None:
            labelled = False
        else:
            correct += int((pred == labels.reshape(-1)).sum())
    if labelled:
        return "accuracy", correct / max(total, 1), out_acc
    return "agreement", agree / max(total, 1), out_acc


def _layer_errors(qm: Any, batches: list[tuple[Any, Any]], sample_size: int, seed: int
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-layer SQNR/MSE/cosine over ``batches`` and (fp32, int8) samples from the first one."""
    scheme, backend = qm.scheme.name, qm.backend
    layer_acc: dict[str, ErrorAccumulator] = {}
    kinds: dict[str, str] = {}
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for i, (inputs, _) in enumerate(batches):
        for name, tr in qm.trace(inputs).items():
            layer_acc.setdefault(name, ErrorAccumulator()).add(tr.fp32, tr.dequantized)
            kinds[name] = tr.kind
            if i == 0:
                ref, got = tr.fp32.flatten(), tr.dequantized.flatten()
                idx = torch.randperm(ref.numel(), generator=gen)[:sample_size]
                samples.append(pd.DataFrame({
                    "scheme": scheme, "backend": backend, "layer": name,
                    "fp32": ref[idx].double().numpy(), "int8_dequantized": got[idx].double().numpy(),
                }))
    layers = pd.DataFrame([
        {"scheme": scheme, "backend": backend, "layer": name, "kind": kinds[name],
         "sqnr_db": acc.sqnr_db(), "mse": acc.mse(), "cosine": acc.cosine()}
        for name, acc in layer_acc.items()
    ], columns=LAYER_COLUMNS)
    samples_df = (pd.concat(samples, ignore_index=True) if samples
                  else pd.DataFrame(columns=SAMPLE_COLUMNS))
    return layers, samples_df
