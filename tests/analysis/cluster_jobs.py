"""Sweep jobs for the cluster tests, in their own module so that Dask workers can import them
(the test fixtures put this folder on the workers' PYTHONPATH)."""

import os


def square(shared, payload):
    return shared["offset"] + payload * payload


def fail_on_three(shared, payload):
    if payload == 3:
        raise ValueError("job 3 failed")
    return payload


def where(shared, payload):
    """Which worker process ran the job, and which copy of the shared inputs it saw."""
    return os.getpid(), id(shared), float(shared["x"].sum())
