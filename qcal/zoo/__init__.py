"""Built-in models, their architectures, training and the digits data.

The public names of ``qcal.zoo`` are those of ``qcal/zoo/zoo.py`` (its ``__all__``).
"""

from qcal.zoo import zoo as _module
from qcal.zoo.zoo import *  # noqa: F403  (the package face: exactly the module's __all__, listed once)

__all__ = list(_module.__all__)
