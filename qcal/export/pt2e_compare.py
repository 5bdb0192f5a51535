"""``compare`` for a PT2E model: its one column (scheme "pt2e" on xnnpack) in a Comparison.

A ``convert_pt2e`` result has no float model beside it and no scheme to calibrate: its qparams
are its own. ``compare_pt2e`` evaluates ``qcal.from_pt2e(converted)`` (the delegate's integers)
with ``qcal.compare``'s own job and frames, against the graph run in float with its activations
unquantized (``Pt2eFloat``: the int8 weights dequantized, the closest the graph holds to the
float model; ``meta["reference"]`` says so). So a PT2E model's run has the same five frames as
any comparison, and the Layers, Scales and Requant pages show it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from qcal.analysis.compare import (
    Comparison,
    Progress,
    _assemble,
    _check_labels,
    _fp32_output,
    _run_info,
    _run_jobs,
)
from qcal.batching import as_eval_batches
from qcal.export.pt2e import from_pt2e
from qcal.export.pt2e_read import float_run

__all__ = ["REFERENCE", "Pt2eFloat", "compare_pt2e"]

REFERENCE = ("the converted graph in float: activations not quantized, weights dequantized from their int8 "
             "codes (a convert_pt2e result keeps no float weights)")


class Pt2eFloat(nn.Module):
    """The converted graph with its activation quantize/dequantize pairs as identities."""

    def __init__(self, converted: torch.fx.GraphModule) -> None:
        super().__init__()
        self.converted = converted

    def forward(self, *inputs: torch.Tensor) -> Any:
        out = float_run(self.converted, *inputs)
        return out[0] if isinstance(out, (tuple, list)) and len(out) == 1 else out


@torch.no_grad()
def compare_pt2e(converted: torch.fx.GraphModule, eval_data: Iterable[Any], *, backend: str = "xnnpack",
                 progress: Progress | None = None, meta: dict[str, Any] | None = None) -> Comparison:
    """One (pt2e, backend) column: accuracy or agreement, per-layer errors, scales, samples.

    Args:
        converted: a ``convert_pt2e`` result; eval_data: (inputs, labels or None) batches.
        backend: the runtime ``from_pt2e`` models ("xnnpack").
    """
    report = progress or (lambda fraction, message: None)
    qm = from_pt2e(converted, backend=backend)
    batches = as_eval_batches(eval_data)
    reference = Pt2eFloat(converted)
    fp32_outputs = [_fp32_output(reference, inputs) for inputs, _ in batches]
    _check_labels(fp32_outputs, batches)
    models = {(qm.scheme.name, qm.backend): qm}
    results, sweep = _run_jobs(models, batches, fp32_outputs, None, report)
    report(1.0, "done")
    info = _run_info([qm.scheme], [qm.backend], models, fp32_outputs, batches, sweep,
                     {"reference": REFERENCE, **(meta or {})})
    return _assemble(models, results, info)
