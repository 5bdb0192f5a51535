"""Repairs side by side: one scheme, the plain calibration and each repair (or chain of them).

``repair_table`` is what ``qcal repair`` prints: per repair, the float model it quantizes
(its accuracy, how far its output moved), the int8 accuracy or top-1 agreement with fp32,
and the settings that reproduce it (names, parameters, seed: applying them again recomputes
the same numbers).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from qcal.calibration.calibrate import calibrate
from qcal.repair.adaround import adaround
from qcal.repair.bias import correct_bias
from qcal.repair.equalize import equalize

__all__ = ["REPAIRS", "repair_table"]

#: the chains ``repair_table`` knows, in the order it prints them
REPAIRS: tuple[str, ...] = ("none", "equalize", "correct_bias", "equalize+correct_bias", "adaround",
                            "equalize+adaround")
Progress = Callable[[float, str], None]


def _score(model: Any, x: torch.Tensor, y: torch.Tensor | None, ref: torch.Tensor) -> float:
    with torch.no_grad():
        top = torch.cat([model(x[i:i + 256]) for i in range(0, len(x), 256)]).argmax(1)
    return float((top == (ref.argmax(1) if y is None else y)).float().mean())


def _settings(chain: str, relu6: str, iterations: int, samples: int, seed: int) -> str:
    parts = []
    for step in chain.split("+"):
        parts.append({"none": "none", "equalize": f"equalize(relu6={relu6})", "correct_bias": "correct_bias(empirical)",
                      "adaround": f"adaround(iterations={iterations}, samples={samples}, seed={seed})"}[step])
    return " + ".join(parts)


def _one(chain: str, model: nn.Module, calib: list[Any], scheme: Any, backend: str, opts: dict) -> tuple[Any, Any]:
    """(QuantizedModel, float model it quantizes, Equalization or None) for one chain."""
    steps = chain.split("+")
    eq = equalize(model, calib, relu6=opts["relu6"]) if "equalize" in steps else None
    base = eq.model if eq is not None else model
    if "adaround" in steps:
        qm = adaround(base, calib, scheme, backend, iterations=opts["iterations"], samples=opts["samples"],
                      seed=opts["seed"])
    else:
        qm = calibrate(base, calib, scheme, backend)
    if "correct_bias" in steps:
        qm = correct_bias(qm, calib)
    return qm, eq


def repair_table(model: nn.Module, calib: list[Any], x: torch.Tensor, y: torch.Tensor | None, scheme: Any,
                 backend: str = "fbgemm", repairs: Sequence[str] = REPAIRS, *, relu6: str = "bounded",
                 iterations: int = 1000, samples: int = 256, seed: int = 0,
                 progress: Progress | None = None) -> pd.DataFrame:
    """One row per repair chain under one scheme.

    Args:
        model: the float model; calib: calibration batches (also the repairs' data);
        x, y: evaluation inputs and labels (None: score top-1 agreement with fp32).
        scheme, backend: as for ``qcal.calibrate``.
        repairs: names from ``REPAIRS``.
        relu6, iterations, samples, seed: equalize's and adaround's settings.

    Returns:
        columns repair, settings, float_metric (of the float model quantized), float_change
        (its largest output change on calib, equalize only), int8_metric, drop (vs the
        original fp32), seconds; metric is accuracy, or agreement when ``y`` is None.
    """
    bad = [r for r in repairs if r not in REPAIRS]
    if bad:
        raise ValueError(f"unknown repair {bad[0]!r}; expected some of: {', '.join(REPAIRS)}")
    report = progress or (lambda f, m: None)
    with torch.no_grad():
        ref = torch.cat([model(x[i:i + 256]) for i in range(0, len(x), 256)])
    fp32 = _score(model, x, y, ref)
    opts, rows = {"relu6": relu6, "iterations": iterations, "samples": samples, "seed": seed}, []
    for i, chain in enumerate(repairs):
        report(i / len(repairs), f"repair: {chain}")
        start = time.perf_counter()
        qm, eq = _one(chain, model, calib, scheme, backend, opts)
        metric = _score(qm, x, y, ref)
        rows.append({"repair": chain, "settings": _settings(chain, relu6, iterations, samples, seed),
                     "float_metric": fp32 if eq is None else _score(eq.model, x, y, ref),
                     "float_change": None if eq is None else eq.max_output_change, "int8_metric": metric,
                     "drop": fp32 - metric, "seconds": time.perf_counter() - start})
    report(1.0, "repair: done")
    return pd.DataFrame(rows)
