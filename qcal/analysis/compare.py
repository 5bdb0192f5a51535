"""Many schemes x backends -> one Comparison of tidy DataFrames.

``compare`` calibrates every scheme in one pass over the calibration data
(``calibrate_many``), evaluates each (scheme, backend) job on the eval data — on an
``Executor`` if one is given — and gathers these frames:

* ``summary``: scheme, backend, metric, value, fp32_value, drop, cosine, int8_bytes, seconds
* ``layers``: scheme, backend, layer, kind, sqnr_db, mse, cosine
* ``scales``: scheme, layer, tensor, channel, scale, zero_point, min, max
* ``histograms``: scheme, layer, observer, bin_left, bin_right, count, clip_min, clip_max
* ``samples``: scheme, backend, layer, fp32, int8_dequantized
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from qcal.batching import as_eval_batches, call_model
from qcal.calibration.calibrate import calibrate_many
from qcal.calibration.model import describe_shape
from qcal.schemes import SCHEMES, Scheme, resolve_scheme

__all__ = ["FRAME_NAMES", "Comparison", "Progress", "compare", "evaluate_job"]

Progress = Callable[[float, str], None]

SUMMARY_COLUMNS = ["scheme", "backend", "metric", "value", "fp32_value", "drop", "cosine",
                   "int8_bytes", "seconds"]
LAYER_COLUMNS = ["scheme", "backend", "layer", "kind", "sqnr_db", "mse", "cosine"]
SCALE_COLUMNS = ["scheme", "layer", "tensor", "channel", "scale", "zero_point", "min", "max"]
HIST_COLUMNS = ["scheme", "layer", "observer", "bin_left", "bin_right", "count", "clip_min",
                "clip_max"]
SAMPLE_COLUMNS = ["scheme", "backend", "layer", "fp32", "int8_dequantized"]
FRAME_NAMES = ("summary", "layers", "scales", "histograms", "samples")


@dataclass(frozen=True)
class Comparison:
    """The result of ``compare``: five tidy frames, metadata and the live models.

    ``models`` maps (scheme, backend) to the calibrated ``QuantizedModel``; it is live
    state, not stored with a saved run.
    """

    summary: pd.DataFrame
    layers: pd.DataFrame
    scales: pd.DataFrame
    histograms: pd.DataFrame
    samples: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)
    models: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False, compare=False)

    def frames(self) -> dict[str, pd.DataFrame]:
        """The five frames by name, as a saved run stores them."""
        return {name: getattr(self, name) for name in FRAME_NAMES}

    @classmethod
    def from_run(cls, run: Any) -> Comparison:
        """A Comparison (without live models) from a saved run."""
        return cls(**{name: run.frames[name] for name in FRAME_NAMES}, meta=dict(run.meta))

    def best(self) -> pd.Series:
        """The summary row with the smallest drop against fp32."""
        return self.summary.sort_values(["drop", "scheme"]).iloc[0]


def _plan(schemes: Sequence[str | Scheme] | None, backends: Sequence[str] | None
          ) -> list[tuple[Scheme, str]]:
    """The (scheme, backend) jobs, following DESIGN.md's rule for *_default presets."""
    resolved = [resolve_scheme(s) for s in (schemes or list(SCHEMES))]
    if not resolved:
        raise ValueError("no schemes to compare; pass scheme names or qcal.Scheme objects")
    own_engine = {"fbgemm_default": "fbgemm", "qnnpack_default": "qnnpack"}
    jobs: list[tuple[Scheme, str]] = []
    for scheme in resolved:
        if backends is None and scheme.name in own_engine and scheme == SCHEMES[scheme.name]:
            wanted = [own_engine[scheme.name]]
        else:
            wanted = list(backends or ["fbgemm"])
        jobs.extend((scheme, b) for b in wanted if (scheme, b) not in jobs)
    return jobs


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    den = a.norm() * b.norm()
    if den == 0:
        return 1.0 if torch.equal(a, b) else 0.0
    return float(a @ b / den)


class _ErrorAccumulator:
    """Running sums for SQNR, MSE and cosine between a reference and its approximation."""

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
    scheme, backend = qm.scheme.name, qm.backend
    correct = agree = total = 0
    labelled = True
    out_acc = _ErrorAccumulator()
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
    seconds = time.perf_counter() - started

    layer_acc: dict[str, _ErrorAccumulator] = {}
    kinds: dict[str, str] = {}
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for i, (inputs, _) in enumerate(eval_batches[:layer_batches]):
        for name, tr in qm.trace(inputs).items():
            layer_acc.setdefault(name, _ErrorAccumulator()).add(tr.fp32, tr.dequantized)
            kinds[name] = tr.kind
            if i == 0:
                ref, got = tr.fp32.flatten(), tr.dequantized.flatten()
                idx = torch.randperm(ref.numel(), generator=gen)[:sample_size]
                samples.append(pd.DataFrame({
                    "scheme": scheme, "backend": backend, "layer": name,
                    "fp32": ref[idx].double().numpy(), "int8_dequantized": got[idx].double().numpy(),
                }))

    if labelled:
        metric, value = "accuracy", correct / max(total, 1)
    else:
        metric, value = "agreement", agree / max(total, 1)
    summary = pd.DataFrame([{
        "scheme": scheme, "backend": backend, "metric": metric, "value": float(value),
        "cosine": out_acc.cosine(), "int8_bytes": int(qm.int8_bytes), "seconds": float(seconds),
    }])
    layers = pd.DataFrame([
        {"scheme": scheme, "backend": backend, "layer": name, "kind": kinds[name],
         "sqnr_db": acc.sqnr_db(), "mse": acc.mse(), "cosine": acc.cosine()}
        for name, acc in layer_acc.items()
    ], columns=LAYER_COLUMNS)
    samples_df = (pd.concat(samples, ignore_index=True) if samples
                  else pd.DataFrame(columns=SAMPLE_COLUMNS))
    return {"summary": summary, "layers": layers, "samples": samples_df}


def _fp32_output(model: torch.nn.Module, inputs: Any) -> torch.Tensor:
    """The float model's output on one eval batch; a batch that does not fit names its shape."""
    try:
        return call_model(model, inputs)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"eval batch of shape {describe_shape(inputs)} does not fit the model: {err}") from err


def _fp32_metric(outputs: list[torch.Tensor], batches: list[tuple[Any, Any]]) -> tuple[str, float]:
    if any(labels is None for _, labels in batches):
        return "agreement", 1.0
    correct = total = 0
    for out, (_, labels) in zip(outputs, batches, strict=True):
        pred = out.reshape(out.shape[0], -1).argmax(dim=1)
        correct += int((pred == labels.reshape(-1)).sum())
        total += pred.numel()
    return "accuracy", correct / max(total, 1)


@torch.no_grad()
def compare(
    model: torch.nn.Module,
    calib_data: Any,
    eval_data: Iterable[Any],
    schemes: Sequence[str | Scheme] | None = None,
    backends: Sequence[str] | None = None,
    *,
    executor: Executor | None = None,
    progress: Progress | None = None,
    mode: str = "auto",
    meta: dict[str, Any] | None = None,
) -> Comparison:
    """Calibrate every scheme once, evaluate each (scheme, backend), return tidy frames.

    Args:
        model: the fp32 model (never modified).
        calib_data: calibration batches (a Tensor, or an iterable of Tensor / tuple / dict).
        eval_data: (inputs, labels) batches; labels may be None, then top-1 agreement with
            fp32 and output cosine replace accuracy.
        schemes: preset names or Schemes; None means every preset.
        backends: engine flavours; None means each *_default preset on its own engine and
            the rest on fbgemm (DESIGN.md).
        executor: a ``concurrent.futures.Executor`` for the (scheme, backend) jobs; None runs
            them in this process, one after the other.
        progress: ``progress(fraction, message)`` callback.
        mode: "auto" | "graph" | "modules", as for ``calibrate``.
        meta: extra metadata to record (model name, data description...).

    Returns:
        A Comparison; ``cmp.summary`` has one row per (scheme, backend).
    """
    report = progress or (lambda fraction, message: None)
    jobs = _plan(schemes, backends)
    batches = as_eval_batches(eval_data)
    float_model = copy.deepcopy(model).eval()
    fp32_outputs = [_fp32_output(float_model, inputs) for inputs, _ in batches]
    for out, (_, labels) in zip(fp32_outputs, batches, strict=True):
        if labels is not None and labels.reshape(-1).shape[0] != out.shape[0]:
            raise ValueError(
                f"labels do not match the outputs: {labels.reshape(-1).shape[0]} labels for "
                f"a batch of {out.shape[0]} outputs"
            )
        if labels is not None and out.dim() >= 2 and labels.numel() and (
                int(labels.max()) >= out.shape[1] or int(labels.min()) < 0):
            bad = int(labels.max()) if int(labels.max()) >= out.shape[1] else int(labels.min())
            raise ValueError(
                f"label {bad} is out of range for a model with "
                f"{out.shape[1]} outputs; labels must be class indices 0..{out.shape[1] - 1}"
            )
    fp32_metric, fp32_value = _fp32_metric(fp32_outputs, batches)

    schemes_in_order = list(dict.fromkeys(s for s, _ in jobs))
    backends_in_order = list(dict.fromkeys(b for _, b in jobs))
    models = calibrate_many(
        model, calib_data, schemes_in_order, backends_in_order, mode=mode,
        progress=lambda f, m: report(0.5 * f, m),
    )
    models = {(s.name, b): models[(s.name, b)] for s, b in jobs}

    results: dict[tuple[str, str], dict[str, pd.DataFrame]] = {}
    if executor is None:
        for i, key in enumerate(models):
            report(0.5 + 0.5 * i / len(models), f"evaluating {key[0]} on {key[1]}")
            results[key] = evaluate_job(models[key], batches, fp32_outputs)
    else:
        futures = {key: executor.submit(evaluate_job, qm, batches, fp32_outputs)
                   for key, qm in models.items()}
        for i, (key, fut) in enumerate(futures.items()):
            results[key] = fut.result()
            report(0.5 + 0.5 * (i + 1) / len(futures), f"evaluated {key[0]} on {key[1]}")
    report(1.0, "done")

    summary = pd.concat([r["summary"] for r in results.values()], ignore_index=True)
    summary["fp32_value"] = fp32_value
    summary["metric"] = summary["metric"].where(summary["metric"] == fp32_metric, fp32_metric)
    summary["drop"] = summary["fp32_value"] - summary["value"]
    summary = summary[SUMMARY_COLUMNS]
    per_scheme = {}
    for (scheme, _), qm in models.items():
        per_scheme.setdefault(scheme, qm)
    scales = _concat_with_scheme((s, qm.scales()) for s, qm in per_scheme.items())
    histograms = _concat_with_scheme((s, qm.histograms()) for s, qm in per_scheme.items())
    info = {
        "schemes": [s.name for s in schemes_in_order],
        "backends": backends_in_order,
        "fp32_metric": fp32_metric,
        "fp32_value": fp32_value,
        "eval_samples": sum(int(out.shape[0]) for out in fp32_outputs),
        "mode": next(iter(models.values())).mode,
        "notes": {f"{s} / {b}": qm.notes for (s, b), qm in models.items() if qm.notes},
        **(meta or {}),
    }
    return Comparison(
        summary=summary,
        layers=pd.concat([r["layers"] for r in results.values()], ignore_index=True)[LAYER_COLUMNS],
        scales=scales.reindex(columns=SCALE_COLUMNS),
        histograms=histograms.reindex(columns=HIST_COLUMNS),
        samples=pd.concat([r["samples"] for r in results.values()], ignore_index=True)[SAMPLE_COLUMNS],
        meta=info,
        models=models,
    )


def _concat_with_scheme(items: Iterable[tuple[str, pd.DataFrame]]) -> pd.DataFrame:
    frames = [df.assign(scheme=scheme) for scheme, df in items]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
