"""Explaining FX checkpoints from several threads at once, as a served dashboard does.

``torch.serialization.safe_globals`` edits one process-wide allowlist: entering adds the
packed-params mapping, leaving removes it. Without serialisation, one thread leaving while
another is still inside ``torch.load`` made the second refuse a good file. A barrier releases
every thread together so the loads really overlap.
"""

from __future__ import annotations

import threading

import torch
from torch import nn

from qcal.checkpoint.explain import explain

qa = torch.ao.quantization
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx  # noqa: E402

THREADS = 6
ROUNDS = 15


class Functional(nn.Module):
    """F.linear on a parameter: FX stores its packed weight as a torch.ScriptObject."""

    def __init__(self) -> None:
        super().__init__()
        self.w, self.b = nn.Parameter(torch.randn(3, 6)), nn.Parameter(torch.randn(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.w, self.b)


def _fx_checkpoint(path) -> None:
    torch.backends.quantized.engine = "fbgemm"
    x = torch.randn(4, 6)
    prepared = prepare_fx(Functional().eval(), qa.get_default_qconfig_mapping("fbgemm"), (x,))
    prepared(x)
    torch.save(convert_fx(prepared).state_dict(), path)


def test_fx_checkpoints_explained_from_several_threads_at_once(tmp_path):
    path = tmp_path / "fx.pt"
    _fx_checkpoint(path)
    expected = explain(path).to_dict("records")
    barrier = threading.Barrier(THREADS)
    errors: list[str] = []
    results: list[bool] = []

    def worker() -> None:
        for _ in range(ROUNDS):
            barrier.wait(timeout=60)  # every thread starts each round together
            try:
                results.append(explain(path).to_dict("records") == expected)
            except ValueError as err:
                errors.append(str(err))

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    print(f"{len(results)} explains succeeded, {len(errors)} refused")
    assert errors == [], f"{len(errors)} of {THREADS * ROUNDS} loads refused: {errors[0][:200]}"
    assert results == [True] * (THREADS * ROUNDS)
