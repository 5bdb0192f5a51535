"""Range estimators: minmax, moving average, histogram (+ L2 search), percentile, entropy, mse.

The public names of ``qcal.observers`` are defined in ``qcal/observers/observers.py`` and re-exported here.
"""

from qcal.observers.observers import (
    Observer,
    RunningHistogram,
    make_observer,
    make_observers,
    qparams_from_histogram,
    range_from_histogram,
)

__all__ = [
    "Observer",
    "RunningHistogram",
    "make_observer",
    "make_observers",
    "qparams_from_histogram",
    "range_from_histogram",
]
