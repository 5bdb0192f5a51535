"""Exports of a calibrated model or recipe to other runtimes: ONNX QDQ (``to_onnx``), torch's
QConfigMapping (``qcal.export.qconfig.to_qconfig_mapping``)."""

from qcal.export.onnx import UnsupportedExport, onnx_bytes, to_onnx

__all__ = ["UnsupportedExport", "onnx_bytes", "to_onnx"]
