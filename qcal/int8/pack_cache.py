"""A small cache of packed layers for the one-shot ``conv2d`` / ``linear``.

A loop that calls ``qcal.int8.conv2d`` with the same weights, as one calls torch's ops, would
otherwise pack the weights (centred copies, oneDNN prepacks, bounds) on every call. The key
must never serve a stale pack:

* a tensor argument is keyed by identity *and* content version: its ``id``, its
  ``_version`` (bumped by every in-place write) and a weak reference that must still resolve
  to the very same object (an ``id`` is reused once a tensor dies, and a dead tensor's
  reference resolves to None);
* a number is keyed by value, and every other argument that changes packing (stride,
  padding, dilation, groups, backend) is part of the key.

Tensors without a version counter (created under ``torch.inference_mode``) are not cached.
The pack is made from a copy of the weights, so the cache does not keep the caller's tensor
alive; an entry dies with that tensor, and the cache holds at most ``MAX_ENTRIES`` packs.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import torch

__all__ = ["MAX_ENTRIES", "cached_pack", "clear"]

#: Packs kept at most (least recently used dropped first).
MAX_ENTRIES = 64

_ENTRIES: OrderedDict[tuple, tuple[tuple, Any]] = OrderedDict()


def _key_part(v: Any) -> tuple[Hashable, Any] | None:
    """(hashable key, weak reference or None) of one argument; None when it cannot be keyed."""
    if isinstance(v, torch.Tensor):
        try:
            version = v._version
        except RuntimeError:  # inference tensors track no versions: never cache them
            return None
        return ("tensor", id(v), version), weakref.ref(v)
    if v is None or isinstance(v, int | float | bool | str):
        return ("value", type(v).__name__, v), None
    if isinstance(v, tuple | list):
        parts = [_key_part(i) for i in v]
        if any(p is None or p[1] is not None for p in parts):
            return None  # tensors inside sequences: not worth the risk
        return ("seq", tuple(p[0] for p in parts)), None
    return None


def _alive(refs: tuple, args: tuple) -> bool:
    return all(r is None or r() is a for r, a in zip(refs, args, strict=True))


def cached_pack(kind: str, pack: Callable[..., Any], args: tuple, options: dict[str, Any]) -> Any:
    """``pack(*args, **options)``, reused while every argument is the same object, unmodified.

    Args:
        kind: "conv2d" or "linear" (part of the key).
        pack: ``pack_conv2d`` or ``pack_linear``.
        args: the positional arguments (weights, scales, zero points, bias).
        options: keyword arguments that change packing (stride, ..., backend).
    """
    parts = [_key_part(a) for a in (*args, *options.values())]
    if any(p is None for p in parts):
        return pack(*args, **options)
    key = (kind, tuple(options), *(p[0] for p in parts))
    refs = tuple(p[1] for p in parts)
    found = _ENTRIES.get(key)
    if found is not None and _alive(found[0], (*args, *options.values())):
        _ENTRIES.move_to_end(key)
        return found[1]
    # packed from a copy: the cache must not keep the caller's weight tensor alive
    packed = pack(args[0].detach().clone(), *args[1:], **options)
    _ENTRIES[key] = (refs, packed)
    # drop the entry when the weight tensor dies (its id may then be reused)
    weakref.finalize(args[0], _ENTRIES.pop, key, None)
    while len(_ENTRIES) > MAX_ENTRIES:
        _ENTRIES.popitem(last=False)
    return packed


def clear() -> None:
    """Forget every cached pack."""
    _ENTRIES.clear()
