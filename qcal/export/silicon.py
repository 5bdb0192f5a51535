"""Simulation vs silicon: where torch's converted PT2E module and XNNPACK differ, and why.

torch's converted module (``convert_pt2e``'s result, what users evaluate accuracy with)
simulates each fused operator in float: ``q = clamp(rint(f32(v * f32(1/so))) + zo)`` with ``v``
the float32 conv/linear/add of the dequantized inputs (float bias, ReLU applied to ``v``).
ExecuTorch's XNNPACK delegate computes it in integers (``qcal.from_pt2e``, bit for bit): conv and
linear ``clamp(rint(f32(f32(acc + bq) * M_j)) + zo, lo, hi)`` with the exact int32 accumulator
and the bias quantized to int32; add the fixed-point ``(Ma(a - za) + Mb(b - zb) + 2^(s-1)) >> s``;
a fused ReLU as ``lo = max(zo, -128)``; global average pooling XNNPACK's qs8 mean
``nearbyint(f32(f32(S) * scale) + zp')`` of the raw codes' sum ``S`` (zero point inside the rounding).

``simulation_gap(model, x)`` runs both and, for each layer, recomputes every differing output
element with one cause at a time switched to the simulation's way, and names the first that
turns XNNPACK's value into torch's, in this order:

inherited
    the layer's input already differs: XNNPACK's arithmetic fed torch's own input codes gives
    torch's value. Layers are the fused conv/linear/add and the global average pools.
accumulation
    float vs integer accumulation: XNNPACK's requantization applied to torch's float sum
    (``v / (sa*sw_j)`` in accumulator units; for add ``v / so * 2^s``), which carries the float
    bias (conv/linear), the float add of dequantized values and the float mean (pools: ``v/sx*N + N*zx``).
rounding
    the requantization's rounding: XNNPACK's exact integer sum, rounded as torch quantizes
    (``rint(f32(V * f32(1/so)))`` of its real value ``V = f32(T * sa*sw_j)``) instead of
    ``f32(T) * M_j`` then rint (for add: instead of the 21-bit multipliers and the shift).
clamping
    the fused activation applied as torch does (ReLU on the value before rounding) instead of
    clamping the codes at ``max(zo, -128)``. Rounding is monotone and ``rint(0) = 0``, so this
    cannot explain a ReLU difference; it is measured, not assumed.
other
    none of them alone (two causes together).

With every cause switched the recomputation is torch's own value (tested), so the counts add up
to the differing elements. Shapes: each layer's output, (N, O, H, W) or (N, O).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from qcal.export.pt2e import Pt2eModel, _dequantize, _load, _target_name, from_pt2e, fused
from qcal.int8.backends.xnnpack import add_multipliers
from qcal.int8.backends.xnnpack_pool import xnnpack_mean_params

__all__ = ["CAUSES", "SimulationGap", "against_delegate", "simulation_gap"]

CAUSES = ("inherited", "accumulation", "rounding", "clamping", "other")
_RELU = ("aten.relu.default", "aten.relu_.default")
_Q = "quantized_decomposed.quantize_per_tensor"


@dataclass(frozen=True, eq=False)
class SimulationGap:
    """Torch's simulation against XNNPACK's integers for one input batch.

    Attributes:
        layers: one row per fused operator in graph order: layer (graph node), module (the
            nn.Module it came from, or ""), op, elements, differing, one count per cause in
            ``CAUSES`` (they add up to differing), max_step (largest |code difference|).
        logits: model output values where torch's converted module differs from XNNPACK.
        outputs: model output values in all.
    """

    layers: pd.DataFrame
    logits: int
    outputs: int

    def by_cause(self) -> pd.DataFrame:
        """Long form for a chart: layer, cause, count (every layer and cause, zeros included)."""
        long = self.layers.melt(id_vars=["layer"], value_vars=list(CAUSES), var_name="cause", value_name="count")
        return long.reset_index(drop=True)


@dataclass(frozen=True, eq=False)
class _Layer:
    node: torch.fx.Node  # the conv2d / linear / add node
    quantize: torch.fx.Node  # the quantize_per_tensor node that ends the fused group
    relu: bool


def _fused_layers(pm: Pt2eModel) -> list[_Layer]:
    by_name = {n.name: n for n in pm.converted.graph.nodes}
    layers = []
    for name in pm.fused_nodes:
        end, relu = by_name[name], False
        users = list(end.users)
        if len(users) == 1 and _target_name(users[0].target) in _RELU:
            end, relu = users[0], True
            users = list(end.users)
        quant = [u for u in users if _target_name(u.target).startswith(_Q)]
        if len(quant) != 1 or len(users) != 1:
            raise ValueError(f"{name}: expected one quantize after the fused operator, got {users}")
        layers.append(_Layer(by_name[name], quant[0], relu))
    return layers


def _simulate(gm: torch.fx.GraphModule, inputs: tuple) -> tuple[Any, dict[str, Any]]:
    """torch's converted module run node by node, every node's value kept (by name)."""
    interp = torch.fx.Interpreter(gm, garbage_collect_values=False)
    with torch.no_grad():
        out = interp.run(*inputs)
    return out, {n.name: v for n, v in interp.env.items()}


def _sim_args(node: torch.fx.Node, env: dict[str, Any]) -> tuple:
    """The layer's arguments as torch computed them: dequantize nodes become their Codes."""
    def one(a):
        if isinstance(a, torch.fx.Node) and _target_name(a.target).startswith("quantized_decomposed.dequantize_per_"):
            return _dequantize(_target_name(a.target), _load(a.args, env))
        return _load(a, env)
    return tuple(one(a) for a in node.args)


def _channel_view(t: torch.Tensor, out: torch.Tensor, op: str) -> torch.Tensor:
    """A per-output-channel vector shaped to broadcast against ``out``."""
    t = t.reshape(-1)
    if op == "linear":
        return t
    return t.reshape(1, -1, *([1] * (out.dim() - 2)))


def _conv_variants(r: Any, args: tuple, v: torch.Tensor, relu: bool, so: float, zo: int, op: str) -> dict:
    """XNNPACK's conv/linear on torch's inputs with each cause switched (codes before clamping)."""
    x, w = args[:2]
    rq = r.requant
    mult = _channel_view(rq.multiplier, r.out, op)
    bq = 0 if rq.bias_int32 is None else _channel_view(rq.bias_int32, r.out, op).to(torch.int64)
    unit = _channel_view(torch.as_tensor(w.scale, dtype=torch.float64), r.out, op) * float(x.scale)  # sa*sw_j
    total = r.acc.to(torch.int64) + bq  # T = acc + bq, exact

    def xnn_round(t):  # rint(f32(f32(T) * M_j))
        return torch.round(t.float() * mult)

    def sim_round(real):  # torch's quantize: rint(f32(V * f32(1/so)))
        return torch.round(real.float() * (1.0 / so))

    return {"exact": xnn_round(total), "accumulation": xnn_round(v.double() / unit),
            "rounding": sim_round(total.double() * unit),
            "clamping": xnn_round(total.clamp_min(0) if relu else total), "sim": sim_round(v.clamp_min(0) if relu else v)}


def _add_variants(args: tuple, v: torch.Tensor, relu: bool, so: float, zo: int) -> dict:
    """XNNPACK's add on torch's inputs with each cause switched (codes before clamping)."""
    a, b = args
    sa, sb, so32 = (torch.tensor(s, dtype=torch.float32) for s in (a.scale, b.scale, so))
    ma, mb, shift = add_multipliers(float(sa / so32), float(sb / so32))
    total = ma * (a.q.to(torch.int64) - a.zero_point) + mb * (b.q.to(torch.int64) - b.zero_point)
    half, one = 2 ** (shift - 1), 2.0**shift

    def xnn_round(t):  # the shift rounding half up
        return torch.div(t + half, one, rounding_mode="floor") if t.is_floating_point() else (t + half) >> shift

    def sim_round(real):
        return torch.round(real.float() * (1.0 / so))

    return {"exact": xnn_round(total), "accumulation": xnn_round(v.double() / so * one),
            "rounding": sim_round(total.double() / one * so),
            "clamping": xnn_round(total.clamp_min(0) if relu else total), "sim": sim_round(v.clamp_min(0) if relu else v)}


def _mean_variants(args: tuple, v: torch.Tensor, so: float, zo: int) -> dict:
    """XNNPACK's global average pooling on torch's inputs with each cause switched (zero point
    added inside XNNPACK's rounding, so its variants come back with ``zo`` taken off again)."""
    x = args[0]
    n = x.q.shape[-1] * x.q.shape[-2]
    total = x.q.to(torch.int64).sum((-2, -1), keepdim=True)  # S: the raw codes' sum
    scale, zp = xnnpack_mean_params(n, x.scale, x.zero_point, so, zo)

    def xnn_round(t):  # nearbyint(f32(f32(S) * scale) + zp')
        return torch.round(t.float() * scale + zp) - zo

    def sim_round(real):
        return torch.round(real.float() * (1.0 / so))

    return {"exact": xnn_round(total), "accumulation": xnn_round(v.double() / x.scale * n + n * x.zero_point),
            "rounding": sim_round((total - n * x.zero_point).double() * x.scale / n), "clamping": xnn_round(total),
            "sim": sim_round(v)}


def layer_variants(pm: Pt2eModel, layer: _Layer, env: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Output codes of ``layer`` fed torch's inputs: "exact" (XNNPACK), one per switched cause
    ("accumulation", "rounding", "clamping") and "sim" (all switched: torch's own value)."""
    node = layer.node
    op = {"aten.conv2d.default": "conv2d", "aten.linear.default": "linear", "aten.add.Tensor": "add",
          "aten.adaptive_avg_pool2d.default": "mean", "aten.mean.dim": "mean"}[_target_name(node.target)]
    args = _sim_args(node, env)
    _, so, zo, qmin, qmax, dtype = _load(layer.quantize.args[:6], env)
    so, zo = float(so), int(zo)
    v = env[node.name]  # torch's float32 value before the ReLU
    if op == "add":
        raw = _add_variants(args, v, layer.relu, so, zo)
    elif op == "mean":
        raw = _mean_variants(args, v, so, zo)
    else:
        r = fused(op, args, layer.relu, so, zo, dtype, pm.backend, detailed=True)
        raw = _conv_variants(r, args, v, layer.relu, so, zo, op)
    lo = max(zo, qmin) if layer.relu else qmin
    out = {k: (t.to(torch.int64) + zo).clamp(lo, qmax) for k, t in raw.items() if k != "sim"}
    out["sim"] = (raw["sim"].to(torch.int64) + zo).clamp(qmin, qmax)  # ReLU already on v
    out["clamping"] = (raw["clamping"].to(torch.int64) + zo).clamp(qmin, qmax)  # ReLU already on T
    return out


def _attribute(exact: torch.Tensor, sim: torch.Tensor, variants: dict[str, torch.Tensor]) -> dict[str, int]:
    """Each differing element's first explaining cause, counted (see the module doc)."""
    left = exact != sim
    counts = {"differing": int(left.sum())}
    for cause, recomputed in (("inherited", variants["exact"]), ("accumulation", variants["accumulation"]),
                              ("rounding", variants["rounding"]), ("clamping", variants["clamping"])):
        explained = left & (recomputed == sim)
        counts[cause] = int(explained.sum())
        left = left & ~explained
    counts["other"] = int(left.sum())
    return counts


def _module_name(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack.values()))[0] if stack else ""


@torch.no_grad()
def simulation_gap(model: torch.fx.GraphModule | Pt2eModel, *inputs: torch.Tensor) -> SimulationGap:
    """Torch's converted PT2E module vs ExecuTorch's XNNPACK delegate, layer by layer, with causes.

    Args:
        model: a ``convert_pt2e`` result (XNNPACKQuantizer) or ``qcal.from_pt2e``'s model of it.
        inputs: the model's inputs, e.g. one (N, C, H, W) float batch.
    Returns:
        A ``SimulationGap``: per-layer counts by cause (module doc) and the differing logits.

    Example: the zoo's digits_cnn under XNNPACKQuantizer per channel, 200 held-out digits (an
    AMD EPYC): 1,573 of 1,550,800 layer outputs differ by one step, 1,267 of them inherited, 303
    from float accumulation; 56 of the 2,000 logits (torch's float kernels differ by CPU).
    """
    pm = model if isinstance(model, Pt2eModel) else from_pt2e(model)
    sim_out, env = _simulate(pm.converted, inputs)
    exact_out, codes = pm.run_with_codes(*inputs)
    rows = []
    for layer in _fused_layers(pm):
        exact = codes[layer.node.name].q.to(torch.int64)
        sim = env[layer.quantize.name].to(torch.int64)
        counts = _attribute(exact, sim, layer_variants(pm, layer, env))
        step = int((exact - sim).abs().max()) if exact.numel() else 0
        op = _target_name(layer.node.target).split(".")[1]
        rows.append({"layer": layer.node.name, "module": _module_name(layer.node), "op": op + ("+relu" if layer.relu else ""),
                     "elements": exact.numel(), **counts, "max_step": step})
    sims, exacts = _flat(sim_out), _flat(exact_out)
    logits = sum(int((s != e).sum()) for s, e in zip(sims, exacts, strict=True))
    columns = ["layer", "module", "op", "elements", "differing", *CAUSES, "max_step"]
    return SimulationGap(pd.DataFrame(rows, columns=columns), logits, sum(s.numel() for s in sims))


def _flat(out: Any) -> list[torch.Tensor]:
    return [o for o in out] if isinstance(out, (tuple, list)) else [out]


@torch.no_grad()
def against_delegate(model: torch.fx.GraphModule | Pt2eModel, *inputs: torch.Tensor) -> dict[str, int]:
    """Lower ``model`` with the XNNPACK partitioner, run ExecuTorch, and count differing outputs.

    Returns ``{"qcal": qcal vs delegate, "torch": torch's converted module vs delegate,
    "outputs": output values}`` (``qcal`` is 0 wherever ``from_pt2e`` models the graph).
    """
    from qcal.export.executorch import lower_to_executorch, run_executorch

    pm = model if isinstance(model, Pt2eModel) else from_pt2e(model)
    theirs = run_executorch(lower_to_executorch(pm.converted, inputs), *inputs)
    counts = {"qcal": 0, "torch": 0, "outputs": 0}
    for name, out in (("qcal", pm(*inputs)), ("torch", pm.converted(*inputs))):
        counts[name] = sum(int((a != b).sum()) for a, b in zip(_flat(out), theirs, strict=True))
    counts["outputs"] = sum(t.numel() for t in theirs)
    return counts
