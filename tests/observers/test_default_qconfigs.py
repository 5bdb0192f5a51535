"""fbgemm_default / qnnpack_default build the observers torch's own defaults build.

Oracle: ``torch.ao.quantization.get_default_qconfig_mapping(backend)``, the qconfig torch's
FX flow gives Conv2d and Linear, instantiated. Every attribute that changes a scale or zero
point is compared with what qcal's ``make_observer`` builds for the preset's QSpec.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.ao.quantization import get_default_qconfig_mapping
from torch.ao.quantization import observer as tobs

import qcal
from qcal.observers.observers import HistogramRangeObserver, MinMaxObserver, make_observer
from qcal.qparams import EPS, qrange

# torch observer class -> qcal's observer name (per tensor/per channel is in the qscheme)
_KINDS = {
    tobs.HistogramObserver: "histogram",
    tobs.MinMaxObserver: "minmax",
    tobs.PerChannelMinMaxObserver: "minmax",
    tobs.MovingAverageMinMaxObserver: "moving_average",
    tobs.MovingAveragePerChannelMinMaxObserver: "moving_average",
}
_DTYPES = {torch.quint8: "quint8", torch.qint8: "qint8"}


def torch_attrs(observer) -> dict:
    """The qparams-changing attributes of an instantiated torch observer."""
    attrs = {
        "kind": _KINDS[type(observer)],
        "dtype": _DTYPES[observer.dtype],
        "qscheme": str(observer.qscheme).removeprefix("torch."),
        "reduce_range": bool(observer.reduce_range),
        "quant_min": int(observer.quant_min),
        "quant_max": int(observer.quant_max),
        "eps": float(observer.eps),
        "is_dynamic": bool(observer.is_dynamic),
    }
    for name in ("bins", "upsample_rate", "averaging_constant", "ch_axis"):
        if hasattr(observer, name):
            attrs[name] = getattr(observer, name)
    return attrs


def qcal_attrs(spec) -> dict:
    """The same attributes, read from the observer qcal builds for ``spec``."""
    observer = make_observer(spec)
    qmin, qmax = qrange(spec.dtype, spec.reduce_range)
    attrs = {
        "kind": spec.observer,
        "dtype": spec.dtype,
        "qscheme": spec.qscheme,
        "reduce_range": spec.reduce_range,
        "quant_min": qmin,
        "quant_max": qmax,
        "eps": EPS,
        "is_dynamic": False,  # qcal calibrates static activation ranges only
    }
    if isinstance(observer, HistogramRangeObserver):
        attrs["bins"], attrs["upsample_rate"] = observer.hist.bins, observer.hist.upsample_rate
    if isinstance(observer, MinMaxObserver) and observer.moving:
        attrs["averaging_constant"] = observer.averaging
    if spec.per_channel:
        attrs["ch_axis"] = spec.ch_axis
    return attrs


@pytest.mark.parametrize("module", [nn.Conv2d, nn.Linear])
@pytest.mark.parametrize("role", ["weight", "activation"])
@pytest.mark.parametrize(("preset", "backend"), [("fbgemm_default", "fbgemm"),
                                                  ("qnnpack_default", "qnnpack")])
def test_preset_builds_torchs_default_observer(preset, backend, role, module):
    mapping = get_default_qconfig_mapping(backend)
    qconfig = mapping.object_type_qconfigs.get(module, mapping.global_qconfig)
    expected = torch_attrs(getattr(qconfig, role)())
    got = qcal_attrs(getattr(qcal.SCHEMES[preset], role))
    print(preset, role, module.__name__, got)
    assert got == expected


def test_x86_default_equals_fbgemm_default():
    # torch's default engine on x86 is "x86"; its default qconfig builds the same observers
    # as fbgemm's, so fbgemm_default is also what a user who never sets an engine calibrates
    for role in ("weight", "activation"):
        x86 = torch_attrs(getattr(get_default_qconfig_mapping("x86").global_qconfig, role)())
        assert x86 == qcal_attrs(getattr(qcal.SCHEMES["fbgemm_default"], role))

