"""Where the quantized state dicts are inside a loaded checkpoint file.

Checkpoints often nest the model's state dict (``{"model_state_dict": ..., "epoch": 3}``);
``find_state_dicts`` finds every dict holding quantized tensors and says why a file without
any is not a quantized state dict (fp32, dynamic fp16, not a state dict at all).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from qcal.io.safe_load import PackedParamsState

__all__ = ["find_state_dicts", "is_quantized"]


def is_quantized(value: Any) -> bool:
    """A quantized tensor, torch packed params, or a container holding one."""
    if isinstance(value, torch.Tensor):
        return value.is_quantized
    if isinstance(value, (tuple, list)):
        return any(is_quantized(v) for v in value)
    if isinstance(value, torch.ScriptObject):
        return True  # torch's packed params; anything else is refused when read
    return isinstance(value, PackedParamsState) and any(t.is_quantized for t in value.tensors())


def _holds_tensors(d: Mapping) -> bool:
    kinds = (torch.Tensor, PackedParamsState, torch.ScriptObject)
    return any(isinstance(v, kinds) or is_quantized(v) for v in d.values())


def find_state_dicts(obj: Any) -> tuple[list[tuple[str, Mapping]], list[tuple[str, str]]]:
    """The state dicts inside a loaded checkpoint (nested up to 4 levels, keys prefixed with
    their path), and (key, note) for what else it holds (metadata, fp32 copies).

    Raises:
        ValueError: not a dict, or no quantized tensors anywhere (the message says what it is).
    """
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"expected a state_dict (a dict of names to tensors), but the file holds a "
            f"{type(obj).__name__}; save model.state_dict() of the converted model"
        )
    found: list[tuple[str, Mapping]] = []
    extra: list[tuple[str, str]] = []
    fp32: list[str] = []

    def visit(prefix: str, d: Mapping, depth: int) -> None:
        if _holds_tensors(d):
            # a reference module (convert_to_reference_fx) records its weight's qscheme instead
            if any(is_quantized(v) or isinstance(v, torch.qscheme) for v in d.values()):
                found.append((prefix, d))
            else:
                fp32.extend(f"{prefix}{k}" for k, v in d.items() if isinstance(v, torch.Tensor))
                if prefix:
                    extra.append((prefix.rstrip("/"), "a nested dict without quantized tensors "
                                  "(e.g. optimizer state or an fp32 copy): not explained"))
            return
        for k, v in d.items():
            if isinstance(v, Mapping) and depth < 4:
                visit(f"{prefix}{k}/", v, depth + 1)
            elif depth == 0:
                extra.append((str(k), f"checkpoint metadata ({type(v).__name__}), not part of a state_dict"))

    visit("", obj, 0)
    if found:
        return found, extra
    if any(v is torch.float16 for _, d in _all_dicts(obj) for v in d.values()):
        raise ValueError(
            "no int8 tensors found: this is a dynamic float16 quantization (packed dtype "
            "torch.float16: fp16 weights, fp32 activations), which has no scales or zero points"
        )
    if fp32:
        raise ValueError(
            f"no quantized tensors found: this looks like an fp32 state_dict ({len(fp32)} float "
            f"tensors, e.g. {fp32[0]!r}); explain reads state dicts saved after "
            "torch.ao.quantization convert / convert_fx"
        )
    keys = ", ".join(repr(k) for k in list(obj)[:5]) or "none"
    raise ValueError(f"no tensors found: the dict (keys {keys}) is not a state_dict")


def _all_dicts(obj: Mapping, prefix: str = "", depth: int = 0) -> list[tuple[str, Mapping]]:
    found = [(prefix, obj)]
    for k, v in obj.items():
        if isinstance(v, Mapping) and depth < 4:
            found += _all_dicts(v, f"{prefix}{k}/", depth + 1)
    return found
