"""Zoo runs: compare schemes on a built-in model, and find such a run in the store or compute it.

The dashboard's default comparison and ``qcal compare --model NAME`` both come from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor

from qcal.analysis.compare import Comparison, Progress, compare
from qcal.schemes import Scheme
from qcal.store.runs import environment, utc_now
from qcal.zoo import datasets
from qcal.zoo.registry import load_named

__all__ = ["compare_zoo"]


def compare_zoo(
    model_name: str = "digits_mobilenet",
    schemes: Sequence[str | Scheme] | None = None,
    backends: Sequence[str] | None = None,
    *,
    eval_samples: int | None = None,
    calib_samples: int | None = None,
    batch_size: int = 128,
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> Comparison:
    """Compare schemes on a zoo model and the digits data (the dashboard's default), or on
    a registered model and its own files (``qcal.zoo.registry``).

    Zoo models calibrate on the 200-image calibration split and evaluate on the held-out
    test split (``eval_samples`` caps it); they are trained on first use and cached in data/.
    ``calib_samples`` calibrates on the first that many calibration inputs only (a new
    comparison, recorded in the run's metadata).
    """
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
    return compare(
        named.model, datasets.calib_batches(calib, batch_size=batch_size),
        datasets.batches(x, y, batch_size=batch_size), schemes, backends,
        executor=executor, progress=lambda f, m: report(0.1 + 0.9 * f, m), meta=meta,
    )
