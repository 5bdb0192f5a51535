"""Exports of a calibrated model: ONNX QDQ (``to_onnx``)."""

from qcal.export.onnx import UnsupportedExport, to_onnx

__all__ = ["UnsupportedExport", "to_onnx"]
