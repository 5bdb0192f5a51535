"""The one-shot conv2d / linear reuse packed weights only while the very same, unmodified
tensors come back (``qcal.int8.pack_cache``)."""

from __future__ import annotations

import gc
import weakref

import torch

import qcal.int8 as qi
from qcal.int8 import pack_cache


def conv_args(seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 128, (2, 8, 6, 6), generator=g, dtype=torch.uint8)
    w = torch.randint(-128, 128, (4, 8, 3, 3), generator=g, dtype=torch.int8)
    return x, w, torch.rand(4, generator=g) * 0.01 + 0.001, torch.randn(4, generator=g)


def fresh_conv(x, w, scale, bias):
    """The same call through a pack made right here (no cache)."""
    packed = qi.pack_conv2d(w, scale, 0, bias, padding=1)
    return packed(x, 0.05, 3, 0.2, 60)


def cached_conv(x, w, scale, bias):
    return qi.conv2d(x, 0.05, 3, w, scale, 0, bias, 0.2, 60, padding=1)


def entries_for(w):
    return [k for k in pack_cache._ENTRIES if ("tensor", id(w), w._version) in k]


def test_a_repeated_call_reuses_one_pack_and_matches_a_fresh_one():
    pack_cache.clear()
    x, w, scale, bias = conv_args(0)
    first = cached_conv(x, w, scale, bias)
    (key,) = entries_for(w)
    packed = pack_cache._ENTRIES[key][1]
    assert torch.equal(cached_conv(x, w, scale, bias), first)
    assert pack_cache._ENTRIES[key][1] is packed and len(entries_for(w)) == 1
    assert torch.equal(first, fresh_conv(x, w, scale, bias))
    qi.conv2d(x, 0.05, 3, w, scale, 0, bias, 0.2, 60, padding=0)  # other geometry: its own pack
    assert len(pack_cache._ENTRIES) == 2


def test_mutating_weights_scales_or_bias_in_place_repacks():
    pack_cache.clear()
    x, w, scale, bias = conv_args(1)
    before = cached_conv(x, w, scale, bias)
    for mutate in (lambda: w.neg_(), lambda: scale.mul_(3), lambda: bias.add_(50)):
        mutate()
        now = cached_conv(x, w, scale, bias)
        assert torch.equal(now, fresh_conv(x, w, scale, bias))
        assert not torch.equal(now, before)
        before = now


def test_a_new_tensor_at_a_reused_id_is_not_served_the_old_pack():
    pack_cache.clear()
    x, w, scale, bias = conv_args(2)
    cached_conv(x, w, scale, bias)
    ((key, (refs, stale)),) = pack_cache._ENTRIES.items()
    old_id = id(w)
    del w
    gc.collect()
    assert not pack_cache._ENTRIES and refs[0]() is None  # the entry died with the tensor
    # CPython reuses ids: plant the dead tensor's entry under a new tensor's id and version,
    # as if the new one had been allocated at the old address
    w2 = conv_args(5)[1]
    planted = tuple(("tensor", id(w2), w2._version) if part == ("tensor", old_id, 0) else part for part in key)
    pack_cache._ENTRIES[planted] = (refs, stale)
    assert torch.equal(cached_conv(x, w2, scale, bias), fresh_conv(x, w2, scale, bias))
    assert pack_cache._ENTRIES[planted][1] is not stale
    assert not torch.equal(stale(x, 0.05, 3, 0.2, 60), fresh_conv(x, w2, scale, bias))


def test_the_cache_does_not_keep_the_callers_weights_alive():
    pack_cache.clear()
    x, w, scale, bias = conv_args(3)
    cached_conv(x, w, scale, bias)
    ref = weakref.ref(w)
    del w
    gc.collect()
    assert ref() is None
    assert not pack_cache._ENTRIES


def test_linear_is_cached_and_inference_tensors_are_not():
    pack_cache.clear()
    g = torch.Generator().manual_seed(4)
    x = torch.randint(0, 256, (5, 16), generator=g, dtype=torch.uint8)
    w = torch.randint(-128, 128, (3, 16), generator=g, dtype=torch.int8)
    qi.linear(x, 0.1, 7, w, 0.01, 0, None, 0.5, 9)
    assert len(pack_cache._ENTRIES) == 1
    w[0, 0] = -w[0, 0] - 1
    assert torch.equal(qi.linear(x, 0.1, 7, w, 0.01, 0, None, 0.5, 9),
                       qi.pack_linear(w, 0.01, 0, None)(x, 0.1, 7, 0.5, 9))
    pack_cache.clear()
    with torch.inference_mode():
        wi = w.clone()
    assert torch.equal(qi.linear(x, 0.1, 7, wi, 0.01, 0, None, 0.5, 9), qi.pack_linear(wi, 0.01, 0, None)(x, 0.1, 7, 0.5, 9))
    assert not pack_cache._ENTRIES
