"""Zoo runs: compare schemes on a built-in model, and find such a run in the store or compute it.

The dashboard's default comparison and ``qcal compare --model NAME`` both come from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor

from qcal.analysis.compare import Comparison, Progress, compare
from qcal.schemes import Scheme
from qcal.store.runs import environment, utc_now
from qcal.zoo import datasets, zoo

__all__ = ["compare_zoo"]


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
