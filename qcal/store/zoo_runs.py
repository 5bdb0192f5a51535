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
from qcal.analysis.compare import Comparison, Progress, compare
from qcal.schemes import Scheme
from qcal.store.runs import environment, utc_now
from qcal.store.store import Store
from qcal.zoo import datasets, zoo

__all__ = ["compare_zoo", "find_or_compute_zoo_run", "find_run", "scorable_models"]


def compare_zoo(
    model_name: str = "digits_mobilenet",
    schemes: Sequence[str | Scheme] | None = None,
    backends: Sequence[str] | None = None,
    *,
    eval_samples: int | None = None,
    batch_size: int = 128,
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> Comparison:
    """Compare schemes on a built-in model and the digits data (the dashboard's default).

    Calibrates on the 200-image calibration split and evaluates on the held-out test split
    (``eval_samples`` caps it). The zoo model is trained on first use and cached in data/.
    """
    report = progress or (lambda f, m: None)
    model = zoo.load(model_name, progress=lambda f, m: report(0.1 * f, m))
    splits = datasets.digits_splits()
    x, y = splits.test
    if eval_samples is not None:
        x, y = x[:eval_samples], y[:eval_samples]
    meta = {
        "model": model_name,
        "model_source": f"zoo:{model_name}",
        "data_description": f"sklearn digits: calibration split {len(splits.calib[0])}, test split {len(x)}",
        "data_fingerprint": datasets.fingerprint(splits.calib[0], x, y),
        "created": utc_now(),
        **environment(),
    }
    return compare(
        model, datasets.calib_batches(splits.calib[0], batch_size=batch_size),
        datasets.batches(x, y, batch_size=batch_size), schemes, backends,
        executor=executor, progress=lambda f, m: report(0.1 + 0.9 * f, m), meta=meta,
    )


def scorable_models() -> list[str]:
    """The zoo models ``compare_zoo`` can score: those with a data set (the digits ones)."""
    return [n for n in zoo.names() if zoo.info(n).data is not None]


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


def find_or_compute_zoo_run(
    model_name: str,
    schemes: Sequence[str],
    backends: Sequence[str],
    *,
    store: Store | str | None = None,
    eval_samples: int | None = None,
    progress: Progress | None = None,
) -> tuple[str, Comparison | None]:
    """The stored run of this (model, schemes, backends), computed and saved on first use.

    Args:
        model_name, schemes, backends: as for ``compare_zoo`` (names, in the order shown).
        store: a ``Store``, a path/URL, or None for the default store.
        eval_samples, progress: passed to ``compare_zoo`` when the run has to be computed.
            The computation runs on the Dask cluster ``$QCAL_DASK`` names, when it is set.

    Returns:
        (run id, the Comparison when it was computed here, with its live models; else None).
    """
    store = store if isinstance(store, Store) else Store(store)
    found = find_run(store.list(), model_name, schemes, backends)
    if found is not None:
        return found, None
    with env_executor() as executor:
        cmp = compare_zoo(model_name, list(schemes), list(backends), eval_samples=eval_samples,
                          executor=executor, progress=progress)
    return store.save_comparison(cmp), cmp
