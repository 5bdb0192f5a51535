"""Values one integer program computed, reused by the next programs that compute them again.

A sweep (sensitivity, recommend) evaluates many recipes of one model on the same batches, and
most of their steps are the same computation: "only layer k int8" runs the fp32 model up to
layer k, "all but layer k" the all-int8 model up to it. ``StepMemo`` keys every step of a
program by what determines its value — its kind, its qparams, its layer's weights and
qparams, the engine flavour, the keys of the values it reads — so a step whose key a base
run stored is read, not recomputed. The keys are content, not object identity: two builds of
one recipe share them, a changed qparam or weight changes them. The values are exactly those
the program computes (the same calls, in the same order, on the same inputs), so results
do not change, only the time; ``tests/analysis/test_sweep_memo.py`` checks it against plain
runs.

In-place fp32 modules (``nn.ReLU(inplace=True)``) would change a stored value: a float step
reading one gets a copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
from collections.abc import Hashable
from typing import Any

import torch
from torch import fx

from qcal.graph.ir import Ref, Step
from qcal.graph.program import _INTEGER_STEPS, IntegerProgram, _load, bind_inputs, release_plan

__all__ = ["StepMemo", "program_keys"]

_FLOAT_KINDS = ("float", "info")


def _digest(t: torch.Tensor | None) -> Hashable:
    """A tensor's content key, cached on the tensor until it is changed in place."""
    if t is None:
        return None
    seen = getattr(t, "_qcal_digest", None)
    if seen is not None and seen[0] == t._version:
        return seen[1]
    data = t.detach().contiguous().cpu()
    h = hashlib.sha1(memoryview(data.reshape(-1).view(torch.uint8).numpy()) if data.numel() else b"")
    key = (str(data.dtype), tuple(data.shape), h.hexdigest())
    with contextlib.suppress(AttributeError, RuntimeError):
        t._qcal_digest = (t._version, key)
    return key


def _layer_key(layer: Any) -> Hashable:
    return ("layer", layer.name, layer.kind, _digest(layer.weight_q), _digest(layer.weight_scale),
            _digest(layer.weight_zero_point), _digest(layer.bias), float(layer.input_scale),
            int(layer.input_zero_point), float(layer.output_scale), int(layer.output_zero_point), bool(layer.relu),
            tuple(layer.stride), tuple(layer.padding), tuple(layer.dilation), int(layer.groups))


def _module_key(program: IntegerProgram, step: Step) -> Hashable:
    if step.op not in ("call_module", "get_attr"):
        return repr(step.target)
    try:
        obj = program.graph.module.get_submodule(step.target) if step.op == "call_module" else None
    except AttributeError:
        obj = None
    if obj is None:
        return ("attr", step.target)
    state = tuple((k, _digest(v)) for k, v in obj.state_dict(keep_vars=True).items())
    return (type(obj).__name__, repr(obj), state)


def _args_key(a: Any, keys: dict[str, Hashable]) -> Hashable:
    out: list[Hashable] = []

    def one(x: Any) -> Any:
        if isinstance(x, Ref):
            out.append(("ref", keys[x.name]))
        elif isinstance(x, torch.Tensor):
            out.append(("tensor", _digest(x)))
        else:
            out.append(("const", repr(x)))
        return x

    fx.node.map_aggregate(a, one)
    return tuple(out)


def _local_key(program: IntegerProgram, step: Step, layer_keys: dict[str, Hashable]) -> Hashable:
    """What a step's value depends on besides the values it reads."""
    if step.kind in _FLOAT_KINDS:  # an fp32 op: its observer (if any) does not change it
        if step.name in program.ort_layers:  # onnxruntime quantizes it with its neighbours' qparams: not shared
            return ("unshared", next(_NUMBERS))
        return (step.kind, step.name, program.backend, step.relu, step.op, _module_key(program, step))
    act = program.act[step.obs] if step.obs is not None else None
    base = (step.kind, step.name, program.backend, program.act_dtype, act, step.relu, step.clamp)
    if step.kind in ("conv", "linear"):  # with the clamp fused into it, if any (program._fusable_clamps)
        return (*base, layer_keys[step.target], program.fused_clamps.get(step.name))
    if step.kind == "dequantize":
        return (*base, program.nhwc.get(step.args[0].name, False))
    refs = step.refs
    inputs = tuple(program.act[program.obs_of(Ref(r))] if r in program._obs_by_name else None for r in refs)
    layout = tuple(program.nhwc.get(r, False) for r in refs)
    return (*base, inputs, layout, step.name in program.scrambled, step.op, repr(step.target))


# A step's key names the values it reads by their keys' numbers: keys stay shallow (a nested
# key would be hashed whole, down to the model's input, at every lookup).
_IDS: dict[Hashable, int] = {}
_NUMBERS = itertools.count()


def _intern(key: Hashable) -> int:
    found = _IDS.get(key)
    return found if found is not None else _IDS.setdefault(key, next(_NUMBERS))  # atomic: threads share it


def program_keys(program: IntegerProgram, layers: dict[str, Any]) -> list[Hashable | None]:
    """A key per step of ``program`` (None for the input and output steps), computed once per
    program. ``layers``: the QuantizedModel's ``quant_layers``."""
    cached = program.__dict__.get("_memo_keys")
    if cached is not None:
        return cached
    layer_keys = {name: _layer_key(layer) for name, layer in layers.items()}
    keys: dict[str, Hashable] = {}
    out: list[Hashable | None] = []
    for step in program.graph.steps:
        if step.kind == "input":
            keys[step.name] = ("input", step.name)
            out.append(None)
            continue
        if step.kind == "output":
            out.append(None)
            continue
        key = _intern((_local_key(program, step, layer_keys), _args_key((step.args, step.kwargs), keys)))
        keys[step.name] = key
        out.append(key)
    program.__dict__["_memo_keys"] = out
    return out


def _nbytes(value: Any) -> int:
    return value.numel() * value.element_size() if isinstance(value, torch.Tensor) else 0


class StepMemo:
    """Stored step values per batch, up to ``budget_bytes`` in all (later values are not stored).

    ``run(qm, inputs, batch, store=...)``: ``qm``'s integer program on one batch, reading every
    step a stored run computed (and, with ``store``, storing what it computes itself).
    """

    def __init__(self, budget_bytes: int = 1 << 30) -> None:
        self.budget = budget_bytes
        self.used = 0
        self.tables: dict[Hashable, dict[Hashable, Any]] = {}
        self.hits = 0

    def run(self, qm: Any, inputs: Any, batch: Hashable, *, store: bool = False,
            keep: dict[str, Any] | None = None, stop: bool = False) -> Any:
        """The program's output on ``inputs`` (``qm(inputs)``'s value); ``keep`` (if given)
        receives the value of each step named in it; with ``stop``, the run ends (returning
        None) once it has them all. Only the steps the output (or ``keep``) needs and no stored
        value gives are computed. With ``store``, the values layers and joins read (the
        conv/linear/add/cat steps' inputs: what a variant's changed layer and later joins read)
        are stored, within the budget."""
        if qm.mode != "graph":
            raise ValueError(f"StepMemo runs graph-mode models; this one is {qm.mode!r}")
        program = qm.runtime()
        steps, keys = program.graph.steps, program_keys(program, qm.quant_layers)
        table = self.tables.setdefault(batch, {})
        compute, need = _plan(steps, keys, table, keep)
        keeps = _kept(program) if store else frozenset()
        env = bind_inputs(program.graph, inputs)
        stored: set[str] = set()
        release = release_plan(program.graph)
        for i, step in enumerate(steps):
            if step.kind == "output":
                return _load(step.args, env)[0]
            if step.kind == "input" or step.name not in need:
                continue
            if i in compute:
                value = self._compute(program, step, env, stored)
                if step.name in keeps and self.used + _nbytes(value) <= self.budget:
                    table[keys[i]] = value
                    self.used += _nbytes(value)
                    stored.add(step.name)
            else:
                value = table[keys[i]]
                self.hits += 1
                stored.add(step.name)
            env[step.name] = value
            if keep is not None and step.name in keep:
                keep[step.name] = value
                if stop and all(v is not None for v in keep.values()):
                    return None
            for name in release[i]:
                env.pop(name, None)
                stored.discard(name)
        raise AssertionError("the graph has no output step")

    @staticmethod
    def _compute(program: IntegerProgram, step: Step, env: dict[str, Any], stored: set[str]) -> Any:
        if step.kind in _FLOAT_KINDS:
            shared = [r for r in step.refs if r in stored and isinstance(env[r], torch.Tensor)]
            if shared:  # an fp32 module may work in place: it gets copies of stored values
                env = dict(env)
                for r in shared:
                    env[r] = env[r].clone()
        return _INTEGER_STEPS.get(step.kind, IntegerProgram._shared)(program, step, env, None)


def _plan(steps: list[Step], keys: list[Hashable | None], table: dict[Hashable, Any],
          keep: dict[str, Any] | None) -> tuple[set[int], set[str]]:
    """(the steps to compute, the names needed): backwards from the output and ``keep``,
    stopping at stored values."""
    need: set[str] = set(keep or ())
    compute: set[int] = set()
    for i in range(len(steps) - 1, -1, -1):
        step = steps[i]
        if step.kind == "output":
            need.update(step.refs)
        elif step.name in need and step.kind != "input" and keys[i] not in table:
            compute.add(i)
            need.update(step.refs)
    return compute, need


def _kept(program: IntegerProgram) -> frozenset[str]:
    """The values a base run stores: what conv/linear layers (int8 or fp32) and joins read."""
    cached = program.__dict__.get("_memo_kept")
    if cached is None:
        layers = set(program.graph.layers)
        cached = frozenset(r for s in program.graph.steps
                           if s.kind in ("conv", "linear", "add", "cat")
                           or (s.kind == "float" and (s.target in layers or len(s.refs) > 1))
                           for r in s.refs)
        program.__dict__["_memo_kept"] = cached
    return cached
