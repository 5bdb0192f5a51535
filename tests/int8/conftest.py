"""Fixtures of the int8 tests that compare against this machine's onnxruntime (ort_cases.py)."""

import pytest
from ort_cases import this_machines_dispatch

from qcal.int8.cpu.mlas import ORT_ENV_VAR


@pytest.fixture(scope="module")
def no_cpu_env():
    """Every test of a module starts from this machine's CPU: no QCAL_ORT_CPU, no QCAL_CPU."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(ORT_ENV_VAR, raising=False)
        mp.delenv("QCAL_CPU", raising=False)
        yield


@pytest.fixture(scope="module")
def machine_dispatch():
    """This machine's MLAS dispatch (the tests compare against its onnxruntime)."""
    return this_machines_dispatch()
