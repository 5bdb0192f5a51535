"""qcal.from_pt2e's model is a QuantizedModel: layers(), scales(), trace() and the Requant page's
worked example read from the converted graph, with ExecuTorch's XNNPACK delegate as the oracle.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("executorch.runtime", reason="the pt2e extra (requirements-dev.txt installs it)")

import qcal
from qcal.export.executorch import lower_to_executorch, run_executorch
from qcal.reporting import worked_example as we
from tests.export.test_pt2e import Residual, Separable, _converted


@pytest.fixture(scope="module", params=[(Residual, True), (Separable, False)], ids=["residual_pc", "separable_pt"])
def pt2e(request):
    cls, per_channel = request.param
    torch.manual_seed(1)
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 2
    converted = _converted(cls().eval(), x, per_channel, seed=3)
    return converted, x, run_executorch(lower_to_executorch(converted, (x,)), x)[0]


def test_layers_frame_holds_the_graphs_qparams(pt2e):
    converted = pt2e[0]
    qm = qcal.from_pt2e(converted)
    assert isinstance(qm, qcal.QuantizedModel) and qm.mode == "pt2e" and qm.backend == "xnnpack"
    frame = qm.layers()
    nodes = {n.name: n for n in converted.graph.nodes}
    for row in frame.itertuples():
        node = nodes[qm.layer_nodes[row.name]]
        x_dq, w_dq = node.args[0], node.args[1]
        assert (row.input_scale, row.input_zero_point) == (float(x_dq.args[1]), int(x_dq.args[2]))
        w_scale = getattr(converted, w_dq.args[1].target) if isinstance(w_dq.args[1], torch.fx.Node) else w_dq.args[1]
        assert row.weight_scale == pytest.approx(torch.as_tensor(w_scale).float().reshape(-1).tolist(), rel=0, abs=0)
        sa, so = torch.tensor(row.input_scale), torch.tensor(row.output_scale)
        expected = ((sa * torch.tensor(row.weight_scale)).float() / so.float()).float()  # XNNPACK's f32 multiplier
        assert row.requant_scale == expected.expand(len(row.requant_scale)).tolist()  # per channel, even per tensor
    assert len(frame) == len(qm.quant_layers) and set(qm.scheme.weight.qscheme.split("_")) >= {"symmetric"}
    assert set(qm.scales()["tensor"]) == {"weight", "activation"}


def test_trace_and_worked_example_agree_with_the_delegate(pt2e):
    converted, x, delegate = pt2e
    qm = qcal.from_pt2e(converted)
    assert torch.equal(qm(x), delegate)
    traces = qm.trace(x)
    last = traces[list(qm.quant_layers)[-1]]
    assert torch.equal(last.dequantized, delegate)  # the model's last layer is its output
    codes = qm.codes(x)
    for name, t in traces.items():
        assert torch.equal(t.output_q, codes[qm.layer_nodes.get(name, name)].q)
        assert t.fp32.shape == t.output_q.shape
        if t.acc is None:
            continue
        shape = tuple(t.output_q.shape)
        index = we.element_index(shape, t.kind, shape[1] - 1, 0, 0) if t.kind == "conv" else (1, shape[1] - 1)
        report = we.element_report(qm, name, t, index, "xnnpack")
        assert report.agrees and report.worked == report.engine == int(t.output_q[index])


def test_only_xnnpack():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x)

    x = torch.randn(3, 4)
    qm = qcal.from_pt2e(_converted(Tiny().eval(), x, True, seed=0))
    assert list(qm.quant_layers) == ["fc"] and qm.with_backend("xnnpack") is qm
    with pytest.raises(ValueError, match="xnnpack"):
        qm.with_backend("fbgemm")
    with pytest.raises(ValueError, match=r"already quantized .*qcal.from_pt2e"):  # sensitivity, recommend too
        qcal.calibrate(qm.converted, x, "xnnpack_default")


def test_x86_inductor_graphs_are_refused_with_the_reason():
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    x = torch.randn(4, 1, 8, 8)
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(torch.export.export(Residual().eval(), (x,)).module(), quantizer)
    prepared(x)
    converted = convert_pt2e(prepared)  # uint8 activations
    with pytest.raises(ValueError, match=r"quint8 .*X86InductorQuantizer.*int8 activations only"):
        qcal.from_pt2e(converted)
    with pytest.raises(ValueError, match="'xnnpack' only"):
        qcal.from_pt2e(converted, backend="x86")


def test_two_inputs_called_or_batched_as_a_tuple_equal_the_delegate():
    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)

        def forward(self, x, y):
            return self.a(x) + self.b(y)

    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    torch.manual_seed(0)
    x, y = torch.randn(5, 4), torch.randn(5, 4)
    prepared = prepare_pt2e(torch.export.export(Two().eval(), (x, y)).module(),
                            XNNPACKQuantizer().set_global(get_symmetric_quantization_config()))
    prepared(x, y)
    converted = convert_pt2e(prepared)
    qm = qcal.from_pt2e(converted)
    delegate = run_executorch(lower_to_executorch(converted, (x, y)), x, y)[0]
    assert torch.equal(qm(x, y), delegate) and torch.equal(qm((x, y)), delegate)  # compare's batches are tuples
    traces = qm.trace((x, y))
    assert list(traces) == ["a", "b", "add"] and torch.equal(traces["add"].dequantized, delegate)
