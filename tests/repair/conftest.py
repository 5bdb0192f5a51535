"""Shared data for the repair tests: the digits splits and 128 calibration images."""

import pytest

from qcal import datasets


@pytest.fixture(scope="module")
def digits():
    d = datasets.digits_splits()
    return d, datasets.calib_batches(d.calib[0][:128])
