"""Shared test setup: deterministic seeds, torch's quantization warnings silenced, and the
quantized engine restored after every test."""

import pytest
import torch

from qcal import _torch_warnings


@pytest.fixture(autouse=True)
def _seed_and_quiet():
    # pytest restores the warning filters around every test, so the filters that
    # `import qcal` installs once are re-applied here, from the same single list.
    _torch_warnings.silence()
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_quantized_engine():
    # many tests (and torch oracles) set the process-wide engine; the next test must not
    # inherit it, or its result would depend on the order tests run in
    before = torch.backends.quantized.engine
    yield
    torch.backends.quantized.engine = before


@pytest.fixture(scope="module")
def one_thread():
    """Run a module single-threaded: on tiny tensors and busy cores, waking OpenMP workers
    costs more than the work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
