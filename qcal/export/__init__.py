"""Exports of a calibrated model: ONNX QDQ (``to_onnx``)."""

from qcal.export.onnx import UnsupportedExport, onnx_bytes, to_onnx

__all__ = ["UnsupportedExport", "onnx_bytes", "to_onnx"]
