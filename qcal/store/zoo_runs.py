"""Zoo runs: compare schemes on a built-in model, and find such a run in the store or compute it.

The dashboard's default comparison (``find_or_compute_zoo_run``) and ``qcal compare --model
NAME`` (``compare_zoo``) both come from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Any

import pandas as pd

from qcal.analysis.cluster import env_executor
from qcal.analysis.compare import Comparison, Progress, compare, planned_backends
from qcal.recipes import Recipe
from qcal.repair.apply import chain_recipe, repair_label, split_repairs
from qcal.scheme_text import run_schemes, scheme_from_text
from qcal.schemes import Scheme
from qcal.store.runs import environment, utc_now
from qcal.store.store import Store
from qcal.zoo import datasets, zoo
from qcal.zoo.registry import load_named, registered

__all__ = ["compare_zoo", "find_or_compute_zoo_run", "find_run", "same_setup", "scorable_models"]


def compare_zoo(
    model_name: str = "digits_mobilenet",
    schemes: Sequence[str | Scheme | Recipe] | None = None,
    backends: Sequence[str] | None = None,
    *,
    eval_samples: int | None = None,
    calib_samples: int | None = None,
    batch_size: int = datasets.ZOO_BATCH,
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> Comparison:
    """Compare schemes on a zoo model and the digits data (the dashboard's default), or on
    a registered model and its own files (``qcal.zoo.registry``). A registered model whose
    factory returns a ``convert_pt2e`` result is not calibrated: ``qcal.export.pt2e_compare``
    gives its one column (scheme "pt2e" on xnnpack), whatever ``schemes`` and ``backends`` ask.

    Zoo models calibrate on the 200-image calibration split and evaluate on the held-out
    test split (``eval_samples`` caps it); they are trained on first use and cached in data/.
    ``calib_samples`` calibrates on the first that many calibration inputs only (a new
    comparison, recorded in the run's metadata).
    """
    from qcal.export.pt2e_compare import compare_pt2e
    from qcal.export.pt2e_examples import is_pt2e

    report = progress or (lambda f, m: None)
    named = load_named(model_name, progress=lambda f, m: report(0.1 * f, m))
    calib, x, y = named.calib, named.eval_x, named.eval_y
    if calib_samples is not None:
        if calib_samples < 1:
            raise ValueError(f"calib_samples must be a positive whole number, got {calib_samples!r}")
        calib = calib[:calib_samples]
    if eval_samples is not None:
        x, y = x[:eval_samples], None if y is None else y[:eval_samples]
    where = "sklearn digits: calibration split" if named.source.startswith("zoo:") else "calibration file"
    meta = {
        "model": model_name,
        "model_source": named.source,
        "data_description": f"{where} {len(calib)}, test split {len(x)}",
        "calib_samples": len(calib),
        "data_fingerprint": datasets.fingerprint(calib, x, y),
        "created": utc_now(),
        **environment(),
    }
    if is_pt2e(named.model):  # a registered convert_pt2e result: its own qparams, one column (pt2e, xnnpack)
        return compare_pt2e(named.model, datasets.batches(x, y, batch_size=batch_size),
                            progress=lambda f, m: report(0.1 + 0.9 * f, m), meta=meta)
    return compare(
        named.model, datasets.calib_batches(calib, batch_size=batch_size),
        datasets.batches(x, y, batch_size=batch_size), schemes, backends,
        executor=executor, progress=lambda f, m: report(0.1 + 0.9 * f, m), meta=meta,
    )


def scorable_models() -> list[str]:
    """The models ``compare_zoo`` can score: the zoo's with a data set (the digits ones),
    then the registered ones (``qcal.zoo.registry``; check them with its ``catalogue``)."""
    return [*(n for n in zoo.names() if zoo.info(n).data is not None), *registered()[0]]


def _as_list(v: Any) -> list[str]:
    if isinstance(v, str):
        return [s.strip() for s in v.replace(";", ",").split(",") if s.strip()]
    return list(v) if v is not None else []


def find_run(runs: pd.DataFrame, model: str, schemes: Sequence[str], backends: Sequence[str]) -> str | None:
    """The newest run of exactly this (model, schemes, backends) in a ``Store.list()`` frame, or None."""
    if runs is None or runs.empty or not {"id", "model"} <= set(runs.columns):
        return None
    want_s, want_b = list(schemes), list(backends)
    hits = runs[runs["model"] == model]
    if "schemes" in hits:
        hits = hits[hits["schemes"].map(_as_list) == pd.Series([want_s] * len(hits), index=hits.index)]
    if "backends" in hits:
        hits = hits[hits["backends"].map(_as_list) == pd.Series([want_b] * len(hits), index=hits.index)]
    if hits.empty:
        return None
    if "created" in hits:
        hits = hits.sort_values("created")
    return str(hits["id"].iloc[-1])


def same_setup(meta: dict[str, Any], schemes: Sequence[Scheme | Recipe], calib_samples: int | None) -> bool:
    """Whether a stored run was computed with exactly these Schemes and repaired recipes
    (definitions and repair settings, not just names) and this calibration size (None: the
    model's whole calibration set)."""
    if run_schemes(meta) != {s.name: s for s in schemes if isinstance(s, Scheme)}:
        return False
    saved = {label: Recipe.from_data(data) for label, data in (meta.get("recipes") or {}).items()}
    if saved != {repair_label(s): s for s in schemes if isinstance(s, Recipe)}:
        return False
    return calib_samples is None or meta.get("calib_samples") == calib_samples


def _spec(value: str | Scheme | Recipe) -> Scheme | Recipe:
    """A Scheme from a preset name or scheme text, or a recipe when repairs follow it
    ("per_tensor_symmetric + equalize", each with ``CHAIN_SETTINGS``)."""
    if isinstance(value, Recipe):
        return value
    base, names = split_repairs(value) if isinstance(value, str) else (value, ())
    return chain_recipe(scheme_from_text(base), names) if names else scheme_from_text(base)


def find_or_compute_zoo_run(
    model_name: str,
    schemes: Sequence[str | Scheme | Recipe],
    backends: Sequence[str],
    *,
    store: Store | str | None = None,
    eval_samples: int | None = None,
    calib_samples: int | None = None,
    progress: Progress | None = None,
) -> tuple[str, Comparison | None]:
    """The stored run of this (model, schemes, backends, calibration size), computed and
    saved on first use.

    Args:
        model_name, backends: as for ``compare_zoo``.
        schemes: preset names, scheme texts (``qcal.parse_scheme``) or Schemes, in the order
            shown, each optionally followed by repairs ("per_tensor_symmetric + equalize"); a
            stored run counts only if its schemes have the same definitions and repair settings.
        store: a ``Store``, a path/URL, or None for the default store.
        eval_samples, calib_samples, progress: passed to ``compare_zoo`` when the run has to
            be computed (``calib_samples`` must also match the stored run's). The
            computation runs on the Dask cluster ``$QCAL_DASK`` names, when it is set.

    Returns:
        (run id, the Comparison when it was computed here, with its live models; else None).
    """
    store = store if isinstance(store, Store) else Store(store)
    resolved = [_spec(s) for s in schemes]
    found = find_run(store.list(), model_name, [repair_label(s) for s in resolved], planned_backends(resolved, backends))
    if found is not None and same_setup(store.load(found).meta, resolved, calib_samples):
        return found, None
    pt2e = find_run(store.list(), model_name, ["pt2e"], ["xnnpack"])  # a PT2E model's one column, whatever was asked
    if pt2e is not None and store.load(pt2e).meta.get("mode") == "pt2e":
        return pt2e, None
    with env_executor() as executor:
        cmp = compare_zoo(model_name, resolved, list(backends), eval_samples=eval_samples,
                          calib_samples=calib_samples, executor=executor, progress=progress)
    return store.save_comparison(cmp), cmp
