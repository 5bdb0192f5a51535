"""Repairs that make per-tensor int8 work: cross-layer equalization, bias correction, AdaRound.

``equalize`` (a new float model), ``correct_bias`` and ``adaround`` (QuantizedModels); see
docs/repairs.md.
"""
