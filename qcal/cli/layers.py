"""``qcal layers`` and ``qcal requant``: a model's int8 layers and one output element's
requantization, step by step (the Layers and Requant pages' numbers in a terminal).

A zoo or registered model is calibrated under ``--scheme`` on ``--backend`` as the dashboard
calibrates it; a registered model whose factory returns a ``convert_pt2e`` result is read with
``qcal.from_pt2e`` (its own qparams: scheme "pt2e", backend "xnnpack").
"""

from __future__ import annotations

import argparse
from typing import Any

from qcal.cli.args import arg, command, write
from qcal.cli.explain import short_list
from qcal.cli.runs import _count, _table

_MODEL = arg("--model", default="digits_cnn", help="a zoo or registered model (a registered convert_pt2e "
                                                     "result is read as it is: scheme pt2e, backend xnnpack)")
_SCHEME = arg("--scheme", default=None, help="preset or scheme text (default fbgemm_default; pt2e for a PT2E model)")
_BACKEND = arg("--backend", default=None, help="engine flavour (default the scheme's own engine, else fbgemm)")


def live_model(name: str, scheme: str | None, backend: str | None) -> Any:
    """The QuantizedModel ``qcal layers``/``requant`` show (see the module doc)."""
    from qcal.export.pt2e_examples import PT2E_SCHEME, is_pt2e, pt2e_model
    from qcal.reporting.views import calibrate_zoo
    from qcal.runnable import PRESET_ENGINES
    from qcal.scheme_text import parse_scheme
    from qcal.zoo.registry import load_named

    model = load_named(name).model
    if is_pt2e(model):
        return pt2e_model(name, model, scheme or PT2E_SCHEME, backend or "xnnpack")
    scheme = scheme or "fbgemm_default"
    return calibrate_zoo(name, parse_scheme(scheme), backend or PRESET_ENGINES.get(scheme, "fbgemm"))


@command("layers", "a model's int8 conv/linear layers: qparams and the backend's requant multipliers",
         _MODEL, _SCHEME, _BACKEND, arg("--format", choices=("table", "csv", "json"), default="table"))
def layers_command(args: argparse.Namespace) -> int:
    qm = live_model(args.model, args.scheme, args.backend)
    frame = qm.layers()
    if args.format == "table":
        frame = frame.assign(**{c: frame[c].map(short_list) for c in
                                ("weight_scale", "weight_zero_point", "requant_scale")})
    write(_table(frame, args.format))
    if args.format == "table":
        write(f"{args.model}: scheme {qm.scheme.name}, backend {qm.backend}, {len(frame)} layers"
              + (f" ({qm.scheme.description})" if qm.mode == "pt2e" else ""))
    return 0


@command("requant", "one output element of a layer from int8 inputs to its int8 value, step by step",
         _MODEL, _SCHEME, _BACKEND, arg("--layer", default=None, help="a name from qcal layers (default the first)"),
         arg("--sample", type=int, default=0, help="held-out input index"),
         arg("--channel", type=int, default=0), arg("--row", type=int, default=None),
         arg("--col", type=int, default=None), arg("--format", choices=("table", "csv", "json"), default="table"))
def requant_command(args: argparse.Namespace) -> int:
    from qcal.reporting import worked_example as we
    from qcal.reporting.views import zoo_eval_inputs

    qm = live_model(args.model, args.scheme, args.backend)
    layer = args.layer or next(iter(qm.quant_layers))
    if layer not in qm.quant_layers:
        raise ValueError(f"no int8 layer {layer!r} in {args.model}; layers: {', '.join(qm.quant_layers)}")
    x = zoo_eval_inputs(args.model, _count(str(args.sample + 1)))[args.sample:args.sample + 1]
    trace = qm.trace(x)[layer]
    shape, kind = tuple(trace.output_q.shape), qm.quant_layers[layer].kind
    _, rows, cols = we.element_grid(shape, kind)
    row = rows // 2 if args.row is None else args.row
    col = cols // 2 if args.col is None else args.col
    index = we.element_index(shape, kind, args.channel, row if rows > 1 else 0, col if cols > 1 else 0)
    report = we.element_report(qm, layer, trace, index, qm.backend)
    write(_table(report.steps, args.format))
    if args.format == "table":
        write(f"{args.model} {layer} element {report.index[1:]} on {qm.backend}: worked {report.worked}, "
              f"engine {report.engine}. {report.verdict}")
    return 0
