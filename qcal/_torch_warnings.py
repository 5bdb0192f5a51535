"""The one place where torch's quantization deprecation warnings are silenced.

torch 2.13 still ships the fbgemm/qnnpack engines that qcal is checked against, but warns
on every use of ``torch.ao.quantization`` and of quantized tensor creation. qcal's own
engine uses none of them; the oracles (tests, ``torch_reference``, checkpoint examples) do.
"""

import warnings

_MESSAGES = (
    r"torch\.ao\.quantization is deprecated",
    r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized tensor",
    r"Please use quant_min and quant_max to specify the range for observers",
    r".*quantized.*deprecated",
)


def silence() -> None:
    """Install warning filters for torch's quantization deprecations (idempotent)."""
    for message in _MESSAGES:
        for category in (UserWarning, DeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", message=message, category=category)
