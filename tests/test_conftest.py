"""The shared fixtures themselves: a test that changes the quantized engine does not leak it."""

import pytest
import torch

_seen: list[str] = []


@pytest.mark.parametrize("engine", ["qnnpack", "fbgemm"])
def test_engine_set_by_a_test_is_restored_for_the_next(engine):
    # both parametrizations see the engine the session started with, whatever the other set
    _seen.append(torch.backends.quantized.engine)
    torch.backends.quantized.engine = engine
    assert len(set(_seen)) == 1, _seen
