"""Exports of calibrated schemes and recipes to other runtimes (torch's QConfigMapping)."""
