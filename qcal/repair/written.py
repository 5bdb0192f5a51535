"""A QuantizedModel's weight codes written back into a float model, for exporters that re-observe.

Exporters (``convert_fx``, ``convert_pt2e``) quantize the weights of a float model with their
own minmax observers: round-to-nearest of ``w / scale``. Codes learned by AdaRound are not
that, so the float model they export is one whose weights *are* the codes::

    w' = (code - zp) * scale        per weight (scale, zp per channel or per tensor)

clamped into the channel's original ``[min w, max w]``, and the weights that *are* a channel's
min or max kept as they were: a minmax observer then sees the same range, hence the same
scale and zero point bit for bit, and ``round(w' / scale) + zp`` gives back ``code``. Where a
learned code lies past the code of its channel's extreme (or moved the extreme itself) the
clamp gives another code; ``moved_codes`` counts them, and exporters that check codes refuse.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from qcal.calibration.model import QuantizedModel, QuantLayer
from qcal.graph.trace import trace_folded
from qcal.qparams import quantize

__all__ = ["learned_layers", "moved_codes", "written_model", "written_weight"]


def _root(qm: QuantizedModel) -> nn.Module:
    """The float module whose layers the codes quantize (BN folded in graph mode)."""
    return qm.graph.module if qm.mode == "graph" else qm.float_model


def _broadcast(t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return t.double().reshape((-1,) + (1,) * (w.dim() - 1)) if t.numel() > 1 else t.double().reshape(())


def written_weight(weight: torch.Tensor, layer: QuantLayer) -> torch.Tensor:
    """``(code - zp) * scale`` inside each channel's range, its extremes kept (float32, weight's shape)."""
    w = weight.detach().double()
    scale, zp = _broadcast(layer.weight_scale, w), _broadcast(layer.weight_zero_point, w)
    groups = w.reshape(w.shape[0], -1) if layer.weight_scale.numel() > 1 else w.reshape(1, -1)  # (O or 1, K)
    lo = groups.amin(1).reshape((-1,) + (1,) * (w.dim() - 1)) if groups.shape[0] > 1 else groups.min()
    hi = groups.amax(1).reshape((-1,) + (1,) * (w.dim() - 1)) if groups.shape[0] > 1 else groups.max()
    values = ((layer.weight_q.double() - zp) * scale).clamp(lo, hi)
    return torch.where((w == lo) | (w == hi), w, values).float()


def _codes(qm: QuantizedModel, name: str, w: torch.Tensor) -> torch.Tensor:
    """Round-to-nearest codes of ``w`` with the layer's weight qparams, within its scheme's range."""
    layer = qm.quant_layers[name]
    spec = (qm.recipe.scheme_for(name) if qm.recipe is not None else qm.scheme).weight
    axis = 0 if layer.weight_scale.numel() > 1 else None
    scale = layer.weight_scale if axis is not None else layer.weight_scale.reshape(())
    zp = layer.weight_zero_point if axis is not None else layer.weight_zero_point.reshape(())
    lo, hi = spec.code_range()
    return quantize(w, scale, zp, spec.dtype, axis=axis, quant_min=lo, quant_max=hi)


def learned_layers(qm: QuantizedModel) -> list[str]:
    """The layers whose codes are not round-to-nearest of their float weights (AdaRound's)."""
    root = _root(qm)
    return [name for name, layer in qm.quant_layers.items()
            if not torch.equal(_codes(qm, name, root.get_submodule(name).weight.detach()), layer.weight_q)]


@torch.no_grad()
def moved_codes(qm: QuantizedModel) -> dict[str, int]:
    """Per learned layer, how many codes round-to-nearest of the written weights does not give back."""
    root = _root(qm)
    out = {}
    for name in learned_layers(qm):
        layer = qm.quant_layers[name]
        written = written_weight(root.get_submodule(name).weight, layer)
        out[name] = int((_codes(qm, name, written) != layer.weight_q).sum())
    return out


@torch.no_grad()
def written_model(qm: QuantizedModel) -> nn.Module:
    """A copy of ``qm``'s float model (BN folded in graph mode) with each learned layer's
    weights written as its codes (see the module doc); ``qm`` itself is not changed."""
    names = learned_layers(qm)
    base = copy.deepcopy(qm.float_model).eval()
    model = copy.deepcopy(trace_folded(base)) if qm.mode == "graph" else base
    for name in names:
        module = model.get_submodule(name)
        module.weight.copy_(written_weight(module.weight, qm.quant_layers[name]))
    return model
