"""PT2E models to study: a float model quantized with XNNPACKQuantizer, or a registered converted one.

``quantize_pt2e(model, calib)`` is torch's flow as a user runs it (``torch.export``, torchao's
``prepare_pt2e``, the calibration batch, ``convert_pt2e``) with ExecuTorch's ``XNNPACKQuantizer``
and ``get_symmetric_quantization_config`` (int8 activations, weights in [-127, 127], per channel
or per tensor). ``named_pt2e(name)`` gives a zoo model so quantized (the built-in examples) or a
registered model whose factory already returns a ``convert_pt2e`` result, with its held-out inputs.
qcal's model loading calls ``.eval()``, which an exported graph refuses unless the factory calls
torchao's ``allow_exported_model_train_eval(converted)`` (``quantize_pt2e`` does).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from qcal.export.pt2e import require_pt2e

__all__ = ["PT2E_SCHEME", "NamedPt2e", "is_pt2e", "named_pt2e", "pt2e_model", "quantize_pt2e"]

PT2E_SCHEME = "pt2e"  # the scheme name of a converted model's own qparams


@torch.no_grad()
def quantize_pt2e(model: nn.Module, calib: torch.Tensor, *, per_channel: bool = True) -> torch.fx.GraphModule:
    """``convert_pt2e`` of ``model`` under XNNPACKQuantizer's symmetric config, calibrated on ``calib``.

    Args:
        model: a float model (evaluated in eval mode; the caller's model is not changed).
        calib: one (N, ...) batch of calibration inputs (also the export's example input).
        per_channel: per-channel weight scales (XNNPACK's default) or one per tensor.
    """
    require_pt2e()
    import copy

    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=per_channel))
    batch = {0: torch.export.Dim.DYNAMIC}  # any batch size runs the converted module
    exported = torch.export.export(copy.deepcopy(model).eval(), (calib,), dynamic_shapes=(batch,)).module()
    prepared = prepare_pt2e(exported, quantizer)
    prepared(calib)
    converted = convert_pt2e(prepared)
    allow_exported_model_train_eval(converted)  # .eval() (as qcal's model loading calls it) works
    return converted


def is_pt2e(model: object) -> bool:
    """Whether ``model`` is a converted PT2E graph (it holds quantized_decomposed nodes)."""
    if not isinstance(model, torch.fx.GraphModule):
        return False
    return any(n.op == "call_function" and "quantized_decomposed" in str(n.target) for n in model.graph.nodes)


@dataclass(frozen=True, eq=False)
class NamedPt2e:
    """A PT2E model by name: the converted graph, held-out inputs and where it came from."""

    name: str
    converted: torch.fx.GraphModule
    x: torch.Tensor
    source: str


def named_pt2e(name: str, *, per_channel: bool = True, samples: int | None = 200) -> NamedPt2e:
    """A zoo model quantized with XNNPACKQuantizer on its calibration split, or a registered one.

    A registered model whose factory returns a ``convert_pt2e`` result is used as it is (then
    ``per_channel`` does not apply); any other registered model is quantized like the zoo's.

    Args:
        name: a zoo or registered model name (``qcal.zoo.registry``).
        per_channel: the weight granularity when qcal quantizes the model.
        samples: how many held-out inputs to keep (None: all).
    """
    from qcal.zoo.registry import load_named

    named = load_named(name)
    x = named.eval_x[:samples] if samples is not None else named.eval_x
    if is_pt2e(named.model):
        return NamedPt2e(name, named.model, x, f"{named.source}, converted by its factory")
    granularity = "per channel" if per_channel else "per tensor"
    converted = quantize_pt2e(named.model, named.calib, per_channel=per_channel)
    return NamedPt2e(name, converted, x, f"{named.source}, XNNPACKQuantizer {granularity}")


def pt2e_model(name: str, converted: torch.fx.GraphModule, scheme: object = PT2E_SCHEME,
               backend: str = "xnnpack") -> object:
    """``qcal.from_pt2e`` of a registered converted model, for the views and commands that take a
    model by name: its qparams are its own, so the only scheme is "pt2e" (ValueError otherwise)."""
    from qcal.export.pt2e import from_pt2e

    qm = from_pt2e(converted, backend=backend)
    label = getattr(scheme, "name", scheme)
    same = getattr(scheme, "weight", None) == qm.scheme.weight and getattr(scheme, "activation", None) == \
        qm.scheme.activation  # a saved run's scheme text, read back
    if label not in (None, PT2E_SCHEME) and not same:
        raise ValueError(f"model {name!r} is a convert_pt2e result: its quantization is its own (scheme "
                         f"{PT2E_SCHEME!r}), it cannot be calibrated as {label!r}")
    return qm
