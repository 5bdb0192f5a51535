"""Shared test setup: deterministic seeds and torch's quantization warnings silenced."""

import pytest
import torch

import qcal  # noqa: F401  (installs the warning filters once)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
