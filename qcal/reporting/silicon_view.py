"""The Simulation vs silicon page's numbers and chart: ``qcal.simulation_gap`` of a named PT2E model."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go

from qcal.export.pt2e_examples import named_pt2e
from qcal.export.silicon import CAUSES, SimulationGap, simulation_gap

__all__ = ["SiliconView", "cause_figure", "silicon_view"]

_TEMPLATE = "plotly_white"
_COLORS = {"inherited": "#8d99ae", "accumulation": "#e76f51", "rounding": "#2a9d8f", "clamping": "#e9c46a",
           "other": "#264653"}


@dataclass(frozen=True, eq=False)
class SiliconView:
    """What the page shows: the gap (per-layer frame, logits) and where the model came from."""

    gap: SimulationGap
    source: str
    samples: int

    @property
    def caption(self) -> str:
        return (f"{self.source}, {self.samples} held-out inputs: torch's converted module differs from "
                f"XNNPACK's integers in {self.gap.logits} of {self.gap.outputs} outputs")


def silicon_view(model: str, per_channel: bool = True, samples: int = 200) -> SiliconView:
    """``simulation_gap`` of ``named_pt2e(model, per_channel=..., samples=...)`` (what ``qcal silicon`` prints)."""
    named = named_pt2e(model, per_channel=per_channel, samples=samples)
    return SiliconView(simulation_gap(named.converted, named.x), named.source, len(named.x))


def cause_figure(by_cause: pd.DataFrame) -> go.Figure:
    """Differing elements per layer, stacked by cause (``SimulationGap.by_cause()``)."""
    fig = go.Figure()
    for cause in CAUSES:
        rows = by_cause[by_cause["cause"] == cause]
        fig.add_trace(go.Bar(x=rows["layer"], y=rows["count"], name=cause, marker_color=_COLORS[cause]))
    fig.update_layout(barmode="stack", template=_TEMPLATE, margin={"t": 30}, xaxis_title="layer (graph order)",
                      yaxis_title="differing output elements",
                      title="Where torch's simulation differs from XNNPACK, and why")
    return fig
