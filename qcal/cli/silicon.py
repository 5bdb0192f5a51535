"""``qcal silicon``: torch's simulation of a PT2E model against XNNPACK's integers, layer by layer,
with the cause of each differing element (``qcal.simulation_gap``; docs/pt2e.md)."""

from __future__ import annotations

import argparse

from qcal.cli.args import arg, command, write
from qcal.cli.runs import _count, _table


@command(
    "silicon",
    "torch's simulated PT2E model vs ExecuTorch's XNNPACK integers: differing elements per layer, by cause",
    arg("--model", default="digits_cnn",
        help="a zoo model (quantized here with XNNPACKQuantizer) or a registered model whose factory "
             "(module:factory in $QCAL_MODELS) returns a convert_pt2e result"),
    arg("--per-tensor", action="store_true", help="per-tensor weight scales when qcal quantizes the model"),
    arg("--samples", type=_count, default=200, help="held-out inputs to run"),
    arg("--delegate", action="store_true",
        help="also lower to ExecuTorch's XNNPACK delegate, run it, and count its differences from qcal and torch"),
    arg("--format", choices=("table", "csv", "json"), default="table"),
)
def silicon_command(args: argparse.Namespace) -> int:
    from qcal.export.pt2e_examples import named_pt2e
    from qcal.export.silicon import against_delegate, simulation_gap

    named = named_pt2e(args.model, per_channel=not args.per_tensor, samples=args.samples)
    gap = simulation_gap(named.converted, named.x)
    write(_table(gap.layers, args.format))
    if args.format != "table":
        return 0
    write(f"{named.name} ({named.source}), {len(named.x)} inputs: torch's converted module differs from "
          f"XNNPACK in {gap.logits} of {gap.outputs} outputs")
    if args.delegate:
        counts = against_delegate(named.converted, named.x)
        write(f"ExecuTorch's XNNPACK delegate: {counts['qcal']} of {counts['outputs']} outputs differ from qcal, "
              f"{counts['torch']} from torch's converted module")
    return 0
