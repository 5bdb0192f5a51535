"""Range estimators: minmax, moving average, histogram (+ L2 search), percentile, entropy, mse.

The public names of ``qcal.observers`` are those of ``qcal/observers/observers.py`` (its ``__all__``).
"""

from qcal.observers import observers as _module
from qcal.observers.observers import *  # noqa: F403  (the package face: exactly the module's __all__, listed once)

__all__ = list(_module.__all__)
