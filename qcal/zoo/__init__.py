"""Built-in models, their architectures, training and the digits data.

The public names of ``qcal.zoo`` are defined in ``qcal/zoo/zoo.py`` and re-exported here.
"""

from qcal.zoo.zoo import (
    MODELS,
    ZOO_VERSION,
    ModelInfo,
    accuracy,
    data_dir,
    evaluate,
    info,
    load,
    load_user_model,
    metadata,
    names,
)

__all__ = [
    "MODELS",
    "ZOO_VERSION",
    "ModelInfo",
    "accuracy",
    "data_dir",
    "evaluate",
    "info",
    "load",
    "load_user_model",
    "metadata",
    "names",
]
