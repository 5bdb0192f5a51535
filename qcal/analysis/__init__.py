"""Analyses over calibrated models: comparisons, and the sweeps that spread them over executors."""
