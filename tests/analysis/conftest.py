"""The real Dask cluster the cluster tests share: started on first use, stopped when the tests of
this package are over (an idle scheduler and two workers cost CI ~15% of a core for the rest of the run)."""

import pytest
from dask_cluster import running_cluster


@pytest.fixture(scope="package")
def cluster(tmp_path_factory):
    pytest.importorskip("distributed")
    with running_cluster(tmp_path_factory.mktemp("dask")) as c:
        yield c
