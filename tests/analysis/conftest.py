"""The real Dask cluster the cluster tests share (started once per test session, on first use)."""

import pytest
from dask_cluster import running_cluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    pytest.importorskip("distributed")
    with running_cluster(tmp_path_factory.mktemp("dask")) as c:
        yield c
