"""ExecuTorch out: a PT2E model lowered to a ``.pte`` with the XNNPACK delegate, and run.

``to_executorch(model, path, example_input)`` lowers a PT2E model with
``to_edge_transform_and_lower(..., partitioner=[XnnpackPartitioner()])``, writes the program and
checks that ExecuTorch's runtime computes ``model(example_input)`` bit for bit (a ValueError
naming the count of differing values otherwise). The PT2E model is ``model.converted`` for a
``Pt2eModel`` (``qcal.from_pt2e``); for a QuantizedModel of the xnnpack flavour
(``qcal.calibrate(model, data, "xnnpack_default")``) it is built by ``qcal.export.scheme_pt2e``
with the model's own qparams, checked entry by entry.
``run_executorch(program, *inputs)`` runs a ``.pte`` file or buffer with
``executorch.runtime.Runtime`` (the tests' oracle).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from qcal.export.pt2e import Pt2eModel, require_pt2e
from qcal.export.scheme_pt2e import to_pt2e

__all__ = ["lower_to_executorch", "run_executorch", "to_executorch"]


def lower_to_executorch(converted: torch.fx.GraphModule, example_inputs: tuple) -> bytes:
    """The ``.pte`` bytes of ``converted`` lowered to ExecuTorch with the XNNPACK partitioner."""
    require_pt2e()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    exported = torch.export.export(converted, tuple(example_inputs))
    edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
    return edge.to_executorch().buffer


def run_executorch(program: bytes | str | Path, *inputs: torch.Tensor) -> list[torch.Tensor]:
    """The outputs of ExecuTorch's runtime for ``program`` (a ``.pte`` path or its bytes)."""
    require_pt2e()
    from executorch.runtime import Runtime

    data = Path(program).read_bytes() if isinstance(program, (str, Path)) else program
    method = Runtime.get().load_program(data).load_method("forward")
    return [t.clone() for t in method.execute(list(inputs))]


def to_executorch(model: Any, path: str | Path, example_input: torch.Tensor | tuple) -> Path:
    """Write ``model`` as an ExecuTorch program with the XNNPACK delegate; see the module doc.

    Args:
        model: a ``Pt2eModel`` (``qcal.from_pt2e``) or a QuantizedModel of backend "xnnpack".
        path: the ``.pte`` file to write.
        example_input: a Tensor or a tuple of them: the export's example and the checked batch.

    Returns the path written. Raises ValueError for a model of another flavour, a scheme or
    model XNNPACK cannot run (named, with the reason: ``qcal.export.scheme_pt2e``), PT2E qparams
    that differ from qcal's (each entry listed), and when the delegate's outputs differ from
    ``model``'s.
    """
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    if isinstance(model, Pt2eModel):
        if model.backend != "xnnpack":
            raise ValueError(f"to_executorch needs the 'xnnpack' flavour, got {model.backend!r}")
        converted = model.converted
    else:
        converted = to_pt2e(model, inputs)
    data = lower_to_executorch(converted, inputs)
    path = Path(path)
    path.write_bytes(data)
    mine = model(*inputs)
    mine = list(mine) if isinstance(mine, (tuple, list)) else [mine]
    theirs = run_executorch(path, *inputs)
    differing = sum(int((a != b).sum()) for a, b in zip(mine, theirs, strict=True))
    if differing:
        raise ValueError(f"{path}: the XNNPACK delegate differs from qcal in {differing} values")
    return path
