"""A captured integer program: ``IntegerProgram.run``'s steps as a list of prepared calls.

At batch 1 the step-by-step program spends most of its time choosing, not computing: for each
layer it checks the codes' dtype and range, picks a kernel route, builds the kernel's arguments
and looks up its fused store, and each lookup reads the CPU qcal emulates from the environment.
A capture makes those choices once per input signature (the inputs' shapes, strides and dtypes,
the CPU qcal emulates, torch's thread count): its first run runs the program step by step and
records, per step, a call with everything decided:

* a conv/linear layer: its native kernel bound to its arguments and fused store
  (``NativeRoute.capture``), where that route gives the layer's codes whatever they are;
* the input quantize: one native pass (the fused rule torch's per-tensor quantize uses, the
  same codes as ``qcal.qparams.quantize``), for the backends whose quantize is that rule;
* every other step: the program's own step.

Later runs with the signature run the list. A prepared call checks its input's shape, strides
and dtype and runs the program's own step where they differ, so a capture computes what the
step-by-step program computes (tests/graph/test_capture.py checks both on every backend).
``QCAL_CAPTURE=0`` turns captures off.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from qcal.graph.ir import Step
from qcal.graph.layouts import torch_memory_format
from qcal.int8 import native
from qcal.int8.cpu.isa import assumed_cpu
from qcal.int8.ops import adaptive_avg_pooler, max_pooler
from qcal.int8.qadd import adder
from qcal.qparams import _UNFUSED, INT_DTYPES, dequantizer

__all__ = ["ENV_VAR", "MAX_CAPTURES", "CapturedRun", "enabled", "prepared", "record", "run", "signature"]

ENV_VAR = "QCAL_CAPTURE"
#: captures kept per program (one per input signature); beyond it the oldest goes
MAX_CAPTURES = 8

StepCall = Callable[[dict[str, Any]], Any]


def enabled() -> bool:
    """Whether programs capture (``QCAL_CAPTURE`` is not "0")."""
    return os.environ.get(ENV_VAR, "1") != "0"


def signature(env: dict[str, Any]) -> tuple | None:
    """The key of a capture for these bound inputs, with the CPU qcal emulates and torch's
    thread count; None where an input is neither a tensor nor a plain constant."""
    parts: list[Any] = [assumed_cpu(), torch.get_num_threads()]
    for name, value in env.items():
        if isinstance(value, torch.Tensor):
            parts.append((name, value.shape, value.stride(), value.dtype))
        elif value is None or isinstance(value, bool | int | float | str):
            parts.append((name, type(value), value))
        else:
            return None
    return tuple(parts)


class CapturedRun:
    """The prepared steps of one program for one input signature.

    Attributes:
        steps: (name, call, names to drop after it) per step, in graph order.
        output: the output step's arguments (``Ref``s to load from the values).
        prepared: the names of the steps whose call was prepared here.
    """

    def __init__(self, steps: list[tuple[str, StepCall, tuple[str, ...]]], output: Any,
                 prepared: frozenset[str] = frozenset()) -> None:
        self.steps = steps
        self.output = output
        self.prepared = prepared  # the steps whose call was prepared (the rest: the program's own)

    def run(self, env: dict[str, Any], load: Callable[[Any, dict[str, Any]], Any]) -> Any:
        for name, call, drop in self.steps:
            env[name] = call(env)
            for gone in drop:
                del env[gone]
        return load(self.output, env)[0]


def run(program: Any, key: tuple, env: dict[str, Any], release: list[tuple[str, ...]],
        own: Callable[[Step], StepCall], load: Callable[[Any, dict[str, Any]], Any]) -> Any:
    """The program's output for the bound inputs ``env`` (``key``: their ``signature``), by
    its capture for them, recorded on this run where it has none (``program._captures``)."""
    found = program._captures.get(key)
    if found is not None:
        return found.run(env, load)
    out, program._captures[key] = record(program, env, release, own, load)
    while len(program._captures) > MAX_CAPTURES:  # the oldest goes
        del program._captures[next(iter(program._captures))]
    return out


def record(program: Any, env: dict[str, Any], release: list[tuple[str, ...]], own: Callable[[Step], StepCall],
           load: Callable[[Any, dict[str, Any]], Any]) -> tuple[Any, CapturedRun]:
    """The program's output for the bound inputs ``env``, and the capture its run recorded
    (``own(step)``: the program's own step as a call of the values)."""
    steps: list[tuple[str, StepCall, tuple[str, ...]]] = []
    done: set[str] = set()
    for i, step in enumerate(program.graph.steps):
        if step.kind == "input":
            continue
        if step.kind == "output":
            return load(step.args, env)[0], CapturedRun(steps, step.args, frozenset(done))
        plain = own(step)
        call = prepared(program, step, env, plain)
        if call is not plain:
            done.add(step.name)
        env[step.name] = call(env)
        steps.append((step.name, call, release[i]))
        for gone in release[i]:
            del env[gone]
    raise AssertionError("the graph has no output step")


def prepared(program: Any, step: Step, env: dict[str, Any], own: StepCall) -> StepCall:
    """The call that stands for ``step`` in a capture, given the values its first run reads
    (``env``, before the step runs); ``own`` is the program's own step."""
    refs = step.args if step.kind == "add" else step.args[:1]
    if not refs or not all(hasattr(r, "name") for r in refs):
        return own
    values = tuple(env.get(r.name) for r in refs)
    build = _BUILDERS.get(step.kind)
    if build is None or not all(isinstance(v, torch.Tensor) for v in values):
        return own
    call = build(program, step, env, *values)
    return own if call is None else _guarded(tuple(r.name for r in refs), values, call, own)


def _layer(program: Any, step: Step, env: dict[str, Any], x: torch.Tensor) -> Callable | None:
    capture = getattr(program.layers[step.target], "capture", None)
    call = capture(x) if capture is not None else None
    codes = program.fused_clamps.get(step.name)
    if call is None or codes is None:
        return call
    return lambda v: call(v).clamp_(*codes)  # the clamp that alone reads it, in place


def _quantize(program: Any, step: Step, env: dict[str, Any], x: torch.Tensor) -> Callable | None:
    if program.backend in _UNFUSED or program.backend == "ort" or x.dtype != torch.float32:
        return None  # those quantize by another rule than the native pass's
    scale, zp = program.act[step.obs]
    return native.quantizer(scale, zp, INT_DTYPES[program.act_dtype])


def _dequantize(program: Any, step: Step, env: dict[str, Any], q: torch.Tensor) -> Callable:
    scale, zp = program.act[step.obs]
    deq, nhwc = dequantizer(scale, zp), program.nhwc.get(step.args[0].name, False)
    return lambda v: torch_memory_format(deq(v), nhwc)


def _max_pool(program: Any, step: Step, env: dict[str, Any], q: torch.Tensor) -> Callable | None:
    return max_pooler(q, **program.pool_kwargs(step, env)) if program.keeps_qparams(step) else None


def _adaptive_pool(program: Any, step: Step, env: dict[str, Any], q: torch.Tensor) -> Callable | None:
    if not program.keeps_qparams(step) or q.dim() != 4:
        return None
    # torch's average pools round by the input's layout: the program's own step's layout
    layout = torch.channels_last if program.nhwc.get(step.args[0].name) else torch.contiguous_format
    pool = adaptive_avg_pooler(q.contiguous(memory_format=layout), *program.input_qparams(step),
                               **program.pool_kwargs(step, env), backend=program.backend)
    return lambda v: pool(v.contiguous(memory_format=layout))


def _add(program: Any, step: Step, env: dict[str, Any], a: torch.Tensor, b: torch.Tensor) -> Callable:
    ra, rb = step.args
    return adder(a, *program.act[program.obs_of(ra)], b, *program.act[program.obs_of(rb)], *program.act[step.obs],
                 relu=step.relu, backend=program.backend)


#: how each step kind's call is prepared (the kinds not listed run the program's own step)
_BUILDERS: dict[str, Callable[..., Callable | None]] = {
    "conv": _layer, "linear": _layer, "quantize": _quantize, "dequantize": _dequantize,
    "max_pool2d": _max_pool, "adaptive_avg_pool2d": _adaptive_pool, "add": _add,
}


def _guarded(names: tuple[str, ...], examples: tuple[torch.Tensor, ...], call: Callable[..., Any],
             own: StepCall) -> StepCall:
    """``call(*(env[n] for n in names))`` while those values are shaped, strided and typed as
    ``examples``, else (or where ``call`` answers None) the program's own step."""
    looks = [(e.shape, e.stride(), e.dtype) for e in examples]

    def fits(x: torch.Tensor, look: tuple) -> bool:
        return x.shape == look[0] and x.dtype == look[2] and x.stride() == look[1]

    if len(names) == 1:
        (name,), (look,) = names, looks

        def run(env: dict[str, Any]) -> Any:
            x = env[name]
            out = call(x) if fits(x, look) else None
            return own(env) if out is None else out  # None: the native pass failed (as the step's own)

        return run

    def run_many(env: dict[str, Any]) -> Any:
        xs = [env[n] for n in names]
        out = call(*xs) if all(fits(x, look) for x, look in zip(xs, looks, strict=True)) else None
        return own(env) if out is None else out

    return run_many
