"""The first screen's lead sentence, grouped caveats, and chart styles."""

from __future__ import annotations

import pandas as pd

from qcal.reporting import figures
from qcal.reporting.story import backend_dashes, grouped_caveats, lead_sentence, scheme_colors


def _summary() -> pd.DataFrame:
    rows = [("per_tensor_symmetric", "fbgemm", 0.8157), ("per_channel_symmetric", "fbgemm", 0.9799),
            ("per_tensor_symmetric", "qnnpack", 0.80), ("per_channel_symmetric", "qnnpack", 0.97)]
    return pd.DataFrame([{"scheme": s, "backend": b, "metric": "accuracy", "value": v,
                          "fp32_value": 0.9816, "drop": 0.9816 - v} for s, b, v in rows])


def test_the_lead_states_the_per_channel_gap_with_the_summary_numbers():
    text = lead_sentence(_summary())
    assert text.startswith("Per-channel weights score 97.99% accuracy and per-tensor 81.57% "
                           "(per_channel_symmetric vs per_tensor_symmetric on fbgemm, fp32 98.16%)")
    assert "a gap of 16.42 points, because one scale per output channel" in text


def test_without_the_pair_the_lead_names_the_best_and_worst_job():
    s = _summary()
    s = s[s["scheme"] == "per_tensor_symmetric"]
    assert lead_sentence(s).startswith("fp32 accuracy is 98.16%; the best int8 job is per_tensor_symmetric on fbgemm at 81.57%")


def test_caveats_are_grouped_one_per_distinct_note_naming_its_jobs():
    notes = {"a / qnnpack": ["clamp bug"], "b / qnnpack": ["clamp bug", "other"], "c / fbgemm": ["other"]}
    assert grouped_caveats(notes) == [("clamp bug", ["a / qnnpack", "b / qnnpack"]),
                                      ("other", ["b / qnnpack", "c / fbgemm"])]


def test_every_scheme_gets_its_own_colour_and_every_backend_its_own_line_style():
    colors = scheme_colors(f"s{i}" for i in range(300))
    assert len(set(colors.values())) == 300
    assert len(set(backend_dashes(["fbgemm", "qnnpack", "onnx", "q31"]).values())) == 4
    layers = pd.DataFrame([{"scheme": f"s{i}", "backend": b, "layer": "l", "sqnr_db": 1.0}
                           for i in range(12) for b in ("fbgemm", "qnnpack")])
    fig = figures.layer_error_figure(layers)
    styles = {(t.line.color, t.line.dash) for t in fig.data}
    assert len(styles) == 24 and len({t.line.color for t in fig.data}) == 12
