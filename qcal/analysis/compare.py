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
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
import torch

from qcal.analysis.cluster import SweepStats, run_sweep
from qcal.analysis.evaluate import LAYER_COLUMNS, SAMPLE_COLUMNS, evaluate_job
from qcal.analysis.metrics import top1_metric
from qcal.batching import as_eval_batches, call_model
from qcal.calibration.calibrate import calibrate_many
from qcal.calibration.model import describe_shape
from qcal.recipes import Recipe, resolve_scheme_or_recipe
from qcal.repair.apply import apply_recipe, chain_recipe, repair_label, split_repairs
from qcal.repair.stats import as_batches
from qcal.runnable import PRESET_ENGINES, preset_backends
from qcal.scheme_text import format_scheme
from qcal.schemes import SCHEMES, Scheme

__all__ = ["FRAME_NAMES", "Comparison", "Progress", "compare", "planned_backends"]

Progress = Callable[[float, str], None]

SUMMARY_COLUMNS = ["scheme", "backend", "metric", "value", "fp32_value", "drop", "cosine",
                   "int8_bytes", "seconds"]
SCALE_COLUMNS = ["scheme", "layer", "tensor", "channel", "scale", "zero_point", "min", "max"]
HIST_COLUMNS = ["scheme", "layer", "observer", "bin_left", "bin_right", "count", "clip_min",
                "clip_max"]
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


def _resolve(value: str | Scheme | Recipe) -> Scheme | Recipe:
    """A scheme, recipe, or a preset name with repairs spelled after it ("per_tensor_symmetric +
    equalize": each repair with its ``CHAIN_SETTINGS``)."""
    if isinstance(value, str):
        base, names = split_repairs(value)
        if names:
            return chain_recipe(base, names)
    return resolve_scheme_or_recipe(value)


def _is_repaired(spec: Scheme | Recipe) -> bool:
    return isinstance(spec, Recipe) and bool(spec.repairs)


def _plan(schemes: Sequence[str | Scheme | Recipe] | None, backends: Sequence[str] | None
          ) -> list[tuple[Scheme | Recipe, str]]:
    """The (scheme, backend) jobs: a *_default preset on its own engine unless backends is given."""
    resolved = [_resolve(s) for s in (schemes or list(SCHEMES))]
    if not resolved:
        raise ValueError("no schemes to compare; pass scheme names or qcal.Scheme objects")
    labels: dict[str, Scheme | Recipe] = {}
    for spec in resolved:
        if labels.setdefault(repair_label(spec), spec) != spec:
            raise ValueError(f"two different schemes or recipes are labelled {repair_label(spec)!r}; "
                             "give each its own name (qcal.Recipe(..., name=...))")
    own_engine = PRESET_ENGINES
    jobs: list[tuple[Scheme | Recipe, str]] = []
    for scheme in resolved:
        base = scheme.default if _is_repaired(scheme) and not scheme.layers else scheme
        if backends is None and base is not None and base.name in own_engine and base == SCHEMES[base.name]:
            wanted = [own_engine[base.name]]
        else:  # a repaired preset runs where its preset runs (xnnpack_default + equalize: on xnnpack)
            wanted = preset_backends(base if base is not None else scheme, backends)
        jobs.extend((scheme, b) for b in wanted if (scheme, b) not in jobs)
    return jobs


def planned_backends(schemes: Sequence[str | Scheme | Recipe] | None, backends: Sequence[str] | None) -> list[str]:
    """The backends a comparison of ``schemes`` asked for ``backends`` runs, in order: what its
    saved run records (the xnnpack presets among fbgemm and qnnpack add xnnpack)."""
    return list(dict.fromkeys(b for _, b in _plan(schemes, backends)))


def _calibrate_all(model: torch.nn.Module, calib_data: Any, jobs: list[tuple[Scheme | Recipe, str]],
                   mode: str, report: Progress) -> dict[tuple[str, str], Any]:
    """{(label, backend): QuantizedModel}: the plain schemes from one calibration pass, each
    scheme with repairs by ``apply_recipe`` (its own pass on its repaired float model)."""
    data = as_batches(calib_data)  # read more than once when some scheme has repairs
    plain = list(dict.fromkeys(s for s, _ in jobs if not _is_repaired(s)))
    repaired = [(s, b) for s, b in jobs if _is_repaired(s)]
    share = len(plain) / (len(plain) + len(repaired))
    models: dict[tuple[str, str], Any] = {}
    if plain:
        models = calibrate_many(model, data, plain, list(dict.fromkeys(b for s, b in jobs if s in plain)),
                                mode=mode, progress=lambda f, m: report(0.5 * share * f, m))
    for i, (recipe, backend) in enumerate(repaired):
        label = repair_label(recipe)
        report(0.5 * (share + (1 - share) * i / len(repaired)), f"repairing: {label} on {backend}")
        models[(label, backend)] = _labelled(apply_recipe(model, data, recipe, backend, mode=mode), label)
    return {(repair_label(s), b): models[(repair_label(s), b)] for s, b in jobs}


def _labelled(qm: Any, label: str) -> Any:
    """The repaired QuantizedModel under its label (the name every frame shows)."""
    out = copy.copy(qm)
    out.scheme = dataclasses.replace(qm.scheme, name=label)
    return out


@torch.no_grad()
def compare(
    model: torch.nn.Module,
    calib_data: Any,
    eval_data: Iterable[Any],
    schemes: Sequence[str | Scheme | Recipe] | None = None,
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
        schemes: preset names, Schemes or Recipes (per-layer schemes, fp32 layers: one more
            column each); None means every preset. A Recipe with repairs (``qcal.with_repairs``)
            or a preset name with repairs after it (``"per_tensor_symmetric + equalize"``,
            settings ``CHAIN_SETTINGS``) is built by ``qcal.apply_recipe`` (its own calibration
            pass) and labelled ``"per_tensor_symmetric + equalize"`` in every frame; ``meta``
            records its settings under ``recipes`` and ``repairs``.
        backends: engine flavours; None means each *_default preset on its own engine and
            the rest on fbgemm.
        executor: a ``concurrent.futures.Executor`` for the (scheme, backend) jobs; None runs
            them in this process, one after the other. On a ``distributed`` executor the
            calibrated models and the eval data go to each worker once, and each job sends
            only its (scheme, backend) key (``meta["dask"]`` records the bytes).
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
    _check_labels(fp32_outputs, batches)
    schemes_in_order = list(dict.fromkeys(s for s, _ in jobs))
    backends_in_order = list(dict.fromkeys(b for _, b in jobs))
    models = _calibrate_all(model, calib_data, jobs, mode, report)
    results, sweep = _run_jobs(models, batches, fp32_outputs, executor, report)
    report(1.0, "done")
    info = _run_info(schemes_in_order, backends_in_order, models, fp32_outputs, batches, sweep, meta)
    return _assemble(models, results, info)


def _run_info(schemes_in_order: list, backends_in_order: list[str], models: dict, fp32_outputs: list,
              batches: list, sweep: Any, meta: dict[str, Any] | None) -> dict[str, Any]:
    """The comparison's metadata: what was compared, the fp32 baseline, notes, sweep costs."""
    fp32_metric, fp32_value = top1_metric(fp32_outputs, batches)
    return {
        "schemes": [repair_label(s) for s in schemes_in_order],
        "scheme_texts": {s.name: format_scheme(s) for s in schemes_in_order if isinstance(s, Scheme)},
        "recipes": {repair_label(s): s.to_data() for s in schemes_in_order if isinstance(s, Recipe)},
        **({"repairs": {repair_label(s): s.to_data()["repairs"] for s in schemes_in_order if _is_repaired(s)}}
           if any(_is_repaired(s) for s in schemes_in_order) else {}),
        "backends": backends_in_order,
        "fp32_metric": fp32_metric,
        "fp32_value": fp32_value,
        "eval_samples": sum(int(out.shape[0]) for out in fp32_outputs),
        "mode": next(iter(models.values())).mode,
        "notes": {f"{s} / {b}": qm.notes for (s, b), qm in models.items() if qm.notes},
        **({"dask": asdict(sweep)} if sweep.workers else {}),
        **(meta or {}),
    }


def _fp32_output(model: torch.nn.Module, inputs: Any) -> torch.Tensor:
    """The float model's output on one eval batch; a batch that does not fit names its shape."""
    try:
        return call_model(model, inputs)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"eval batch of shape {describe_shape(inputs)} does not fit the model: {err}") from err


def _check_labels(fp32_outputs: list[torch.Tensor], batches: list[tuple[Any, Any]]) -> None:
    """Labels must be one class index per output row, inside the model's output range."""
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


def _evaluate_key(shared: dict[str, Any], key: tuple[str, str]) -> dict[str, pd.DataFrame]:
    """One (scheme, backend) job of a sweep: its model and the eval data come from ``shared``."""
    return evaluate_job(shared["models"][key], shared["batches"], shared["fp32_outputs"])


def _run_jobs(models: dict[tuple[str, str], Any], batches: list[tuple[Any, Any]],
              fp32_outputs: list[torch.Tensor], executor: Executor | None, report: Progress
              ) -> tuple[dict[tuple[str, str], dict[str, pd.DataFrame]], SweepStats]:
    """``evaluate_job`` for every (scheme, backend): here one after the other, or on ``executor``
    (on a Dask cluster, models and data go to each worker once; each job is just its key)."""
    keys = list(models)
    shared = {"models": models, "batches": batches, "fp32_outputs": fp32_outputs}
    frames, stats = run_sweep(executor, _evaluate_key, shared, keys,
                              progress=lambda f, m: report(0.5 + 0.5 * f, m),
                              describe=lambda key: f"evaluating {key[0]} on {key[1]}")
    return dict(zip(keys, frames, strict=True)), stats


def _assemble(models: dict[tuple[str, str], Any], results: dict[tuple[str, str], dict[str, pd.DataFrame]],
              info: dict[str, Any]) -> Comparison:
    """The jobs' frames joined into one Comparison; the summary measured against fp32."""
    summary = pd.concat([r["summary"] for r in results.values()], ignore_index=True)
    summary["fp32_value"] = info["fp32_value"]
    summary["metric"] = summary["metric"].where(summary["metric"] == info["fp32_metric"], info["fp32_metric"])
    summary["drop"] = summary["fp32_value"] - summary["value"]
    per_scheme: dict[str, Any] = {}
    for (scheme, _), qm in models.items():
        per_scheme.setdefault(scheme, qm)
    scales = _concat_with_scheme((s, qm.scales()) for s, qm in per_scheme.items())
    histograms = _concat_with_scheme((s, qm.histograms()) for s, qm in per_scheme.items())
    return Comparison(
        summary=summary[SUMMARY_COLUMNS],
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
