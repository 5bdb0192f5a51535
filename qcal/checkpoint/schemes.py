"""Which quantization scheme most likely produced the tensors of a checkpoint, and why.

A converted model keeps only the result of calibration: scales, zero points and integer
codes. Some patterns in them are fingerprints of the observer that chose them:

* every weight zero point 0 (qint8) or 128 (quint8): a symmetric observer. Torch stores
  symmetric tensors as ``per_*_affine``; symmetric is a way of choosing qparams.
* a per-channel symmetric qint8 weight: FBGEMM's (and x86's) default; per-tensor: QNNPACK's.
* max |q| of a symmetric weight at 127/128: full qint8 range; at most 64: ``reduce_range``.
* an activation zero point above 127: a ``reduce_range`` observer maps onto 0..127 and cannot
  produce it, so activations used the full 0..255 range, as QNNPACK's default does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qcal.checkpoint.weights import QWeight
from qcal.schemes import SCHEMES

__all__ = [
    "ActivationEvidence",
    "WeightEvidence",
    "activation_evidence",
    "model_scheme",
    "weight_evidence",
]


@dataclass(frozen=True)
class WeightEvidence:
    """What a quantized weight's storage says about the observer that produced it.

    Attributes:
        dtype: "qint8" or "quint8".
        qscheme: the qcal qscheme name it fits, e.g. "per_channel_symmetric".
        channels: number of (scale, zero point) pairs: 1 per tensor, else per output channel.
        max_abs_code: the largest |q - zero_point| over the tensor (128 for a full qint8
            symmetric range, 64 with reduce_range).
        reason: a plain-language sentence saying why.
    """

    dtype: str
    qscheme: str
    channels: int
    max_abs_code: int
    reason: str

    @property
    def reduce_range(self) -> bool:
        """True when the codes never leave the halved range."""
        return self.max_abs_code <= 64


@dataclass(frozen=True)
class ActivationEvidence:
    """What the activation zero points of a whole checkpoint say about its observers.

    Attributes:
        full_range: some zero point above 127 proves full-range (0..255) activations.
        symmetric: every non-zero activation zero point is 128 (symmetric quint8).
        zero_points: the activation zero points seen, in order.
    """

    full_range: bool
    symmetric: bool
    zero_points: tuple[int, ...]


def weight_evidence(w: QWeight) -> WeightEvidence:
    """Read a quantized weight's qscheme and range from its storage.

    Args:
        w: the weight's codes and qparams (qint8 or quint8, per tensor or per channel).

    Returns:
        The evidence, with ``qscheme`` naming the fitting qcal qscheme.
    """
    dtype = w.dtype
    per_channel = w.axis is not None
    zps = torch.tensor(w.zero_points, dtype=torch.float64)
    codes = w.codes.to(torch.float64)
    if per_channel:
        codes = codes.movedim(w.axis, 0)
        centred = codes - zps.view(-1, *([1] * (codes.dim() - 1)))
    else:
        centred = codes - zps[0]
    max_abs = int(centred.abs().max()) if centred.numel() else 0
    sym_zp = 0 if dtype == "qint8" else 128
    symmetric = bool((zps == sym_zp).all())
    granularity = "per_channel" if per_channel else "per_tensor"
    qscheme = f"{granularity}_{'symmetric' if symmetric else 'affine'}"
    n = int(zps.numel())
    stored = w.qscheme
    if symmetric:
        why = f"every zero point is {sym_zp}, the centre of {dtype}: a symmetric observer"
        if stored.endswith("affine"):
            why += (
                f"; torch stores it as {stored} with these zero points (symmetric is how the "
                "qparams were chosen, not a storage format)"
            )
        if max_abs <= 64:
            why += f"; max |q| = {max_abs} <= 64: the halved reduce_range codes"
        else:
            why += f"; max |q| = {max_abs}: the full {dtype} range, not reduce_range"
    else:
        why = f"zero points vary ({_few(list(w.zero_points))}): an affine observer fitted to min and max"
    return WeightEvidence(dtype, qscheme, n, max_abs, why)


def activation_evidence(zero_points: list[int]) -> ActivationEvidence:
    """Summarise the quint8 activation zero points of one checkpoint."""
    zps = tuple(int(z) for z in zero_points)
    nonzero = [z for z in zps if z != 0]
    return ActivationEvidence(
        full_range=any(z > 127 for z in zps),
        symmetric=bool(nonzero) and all(z == 128 for z in nonzero),
        zero_points=zps,
    )


def activation_reason(zero_point: int, evidence: ActivationEvidence) -> str:
    """One sentence on what an activation zero point says about its observer."""
    z = int(zero_point)
    if z == 128 and evidence.symmetric:
        return "128 is the centre of quint8's 0..255: a symmetric quint8 observer, full range"
    if z > 127:
        also = " (exactly 128 is also what a symmetric quint8 observer gives)" if z == 128 else ""
        return (
            f"zero point {z} > 127: a reduce_range observer maps onto 0..127 and cannot produce "
            f"it, so activations were quantized full range (0..255), as qnnpack's default does{also}"
        )
    if z == 0:
        return "zero point 0: the range starts at 0.0 (an output after a fused ReLU, or non-negative data)"
    if evidence.full_range:
        return f"zero point {z} fits full-range activations (other zero points in this file exceed 127)"
    return (
        f"zero point {z} <= 127: consistent with reduce_range (0..127, the fbgemm/x86 default); "
        "full-range activations can give it too"
    )


def model_scheme(weight: WeightEvidence | None, acts: ActivationEvidence) -> tuple[str, str]:
    """The qcal preset (or qscheme name) that best explains a weight plus the activations.

    Presets are matched by their weight QSpec (dtype, qscheme) and then by whether their
    activations are reduce_range; ``*_default`` presets win ties, since their observers are
    what torch applies when nobody chose otherwise.

    Returns:
        (name, reason): a preset name from ``qcal.SCHEMES`` when one fits, else the weight's
        qscheme name, and why.
    """
    if weight is None:
        if acts.full_range:
            return (
                "qnnpack_default",
                "activations use the full 0..255 range (a zero point above 127)",
            )
        return "", "no quantized weight to compare with"
    fits = [
        s
        for s in SCHEMES.values()
        if (s.weight.dtype, s.weight.qscheme) == (weight.dtype, weight.qscheme)
        and not (acts.full_range and s.activation.reduce_range)
    ]
    # without a zero point above 127 there is no proof either way: prefer reduce_range presets
    fits.sort(
        key=lambda s: (
            not acts.full_range and not s.activation.reduce_range,
            not s.name.endswith("_default"),
        )
    )
    act = "full-range activations" if acts.full_range else "activation zero points all <= 127"
    if not fits:
        extra = (
            " (torch's onednn default qconfig does this)"
            if weight.qscheme == "per_channel_symmetric" and acts.full_range
            else ""
        )
        return (
            weight.qscheme,
            f"{weight.qscheme} {weight.dtype} weights with {act}: no qcal preset{extra}",
        )
    best = fits[0]
    reason = f"{weight.qscheme} {weight.dtype} weights with {act} -> {best.name}"
    if best.name == "per_tensor_symmetric":
        reason += " (qnnpack_default if activations were observed full range; no zero point above 127 shows it)"
    return best.name, reason


def _few(values: list, n: int = 3) -> str:
    shown = ", ".join(str(v) for v in values[:n])
    return shown + (f", … {len(values)} values" if len(values) > n else "")
