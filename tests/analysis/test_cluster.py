"""Sweeps on executors and on a real Dask cluster: a `dask scheduler` and two `dask worker`
processes on loopback, started and stopped by these tests (no thread LocalCluster).

With torch on one thread in this process (as on the workers), a sweep on the cluster gives
frames identical value for value to the in-process run: torch's fp32 convolution sums in a
thread-dependent order, so on different thread counts the per-layer fp32 references (and so
SQNR/MSE) may differ in the last bits.
"""

import io
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cluster_jobs
import pandas as pd
import pytest
import torch
from dask_cluster import assert_all_stopped, free_port, running_cluster, suspicious, worker_killer

import qcal
from qcal.analysis.cluster import Sweep, connect, dask_executor, env_executor, run_sweep
from qcal.cli.main import main
from qcal.store import Store
from qcal.store.zoo_runs import find_or_compute_zoo_run
from qcal.zoo import datasets, zoo

distributed = pytest.importorskip("distributed")

SCHEMES = "per_tensor_affine,per_channel_symmetric,fbgemm_default,qnnpack_default"


def _assert_same_frames(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    assert set(a) == set(b)
    for name in a:
        left, right = a[name], b[name]
        if name == "summary":  # wall time differs; every other cell must match exactly
            left, right = left.drop(columns="seconds"), right.drop(columns="seconds")
        pd.testing.assert_frame_equal(left, right, check_exact=True, obj=name)


# ---------------------------------------------------------------- sweeps without a cluster
def test_a_sweep_returns_results_in_payload_order_in_process_and_on_threads():
    seen = []
    payloads = [5, 1, 4, 2, 3]
    in_process, stats = run_sweep(None, cluster_jobs.square, {"offset": 10}, payloads,
                                  progress=lambda f, m: seen.append((f, m)))
    assert in_process == [35, 11, 26, 14, 19]
    assert stats.workers == 0 and stats.sent_bytes == 0
    assert seen[0] == (0.0, "5 (1/5)")
    with ThreadPoolExecutor(3) as pool:
        seen.clear()
        threaded, _ = run_sweep(pool, cluster_jobs.square, {"offset": 10}, payloads,
                                progress=lambda f, m: seen.append((f, m)))
    assert threaded == in_process
    assert [f for f, _ in seen] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert all(m.endswith(f"done ({i}/5)") for i, (_, m) in enumerate(seen, 1))


def test_a_failing_job_raises_its_own_error():
    with ThreadPoolExecutor(2) as pool, pytest.raises(ValueError, match="job 3 failed"):
        run_sweep(pool, cluster_jobs.fail_on_three, None, [1, 2, 3, 4])


def test_an_unreachable_scheduler_is_one_clear_error_naming_the_address():
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ConnectionError, match=f"cannot reach the Dask scheduler at {address}"):
        connect(address, timeout=5)
    with pytest.raises(ValueError, match="bad Dask scheduler address 'nonsense'"):
        connect("nonsense")


def test_the_cli_says_which_cluster_it_cannot_reach(capsys):
    address = f"tcp://127.0.0.1:{free_port()}"
    assert main(["compare", "--model", "digits_mlp", "--no-save", "--dask", address]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"qcal: error: cannot reach the Dask scheduler at {address}")


def test_without_the_distributed_package_the_cli_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    assert main(["bench", "--quick", "--dask", "tcp://127.0.0.1:8786"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("qcal: error: running on a Dask cluster needs the distributed package: "
                   "pip install -r requirements.txt (it pins dask[distributed])")


def test_qcal_dask_unset_means_in_process():
    with env_executor({}) as executor:
        assert executor is None


# ---------------------------------------------------------------- on the real cluster
def test_shared_inputs_reach_each_worker_once_and_jobs_stay_small(cluster):
    x = torch.arange(1_000_000, dtype=torch.float32)  # 4 MB of "data"
    with dask_executor(cluster.address) as executor, Sweep(executor, {"x": x}) as sweep:
        client = executor._client
        holders = client.who_has(sweep._remote)[sweep._remote.key]
        results = sweep.map(cluster_jobs.where, list(range(12)))
    stats = sweep.stats
    assert len(holders) == 2 == stats.workers  # broadcast: one copy on each worker
    assert [r[2] for r in results] == [float(x.sum())] * 12
    copies = {(pid, shared_id) for pid, shared_id, _ in results}
    assert len({pid for pid, _ in copies}) == len(copies)  # one deserialized copy per worker
    assert 4_000_000 <= stats.shared_bytes < 4_100_000
    assert stats.jobs == 12 and stats.job_bytes < 1_000
    per_job = stats.jobs * stats.shared_bytes
    print(f"\nsent {stats.sent_bytes} bytes for 12 jobs on 2 workers "
          f"(shared {stats.shared_bytes} once per worker, jobs <= {stats.job_bytes} bytes); "
          f"sending the data with each job: {per_job} bytes")
    assert stats.sent_bytes < per_job / 5


def _runs(store: Path) -> dict[str, object]:
    s = Store(store)
    return {("dask" if "dask" in s.load(i).meta else "local"): s.load(i) for i in s.list()["id"]}


def test_cli_compare_on_the_cluster_equals_the_in_process_run(cluster, tmp_path, capsys, one_thread):
    store = tmp_path / "runs.sqlite"
    args = ["compare", "--model", "digits_cnn", "--schemes", SCHEMES, "--eval-samples", "96",
            "--batch-size", "32", "--store", str(store), "--format", "csv"]
    assert main(args) == 0
    assert main([*args, "--dask", cluster.address]) == 0
    err = capsys.readouterr().err
    assert "dask: 4 jobs on 2 workers; sent " in err
    runs = _runs(store)
    _assert_same_frames(runs["local"].frames, runs["dask"].frames)
    stats = runs["dask"].meta["dask"]
    print(f"\ndigits_cnn, 4 schemes: {stats}")
    assert stats["workers"] == 2 and stats["jobs"] == 4
    assert stats["job_bytes"] < 1_000 < 100_000 < stats["shared_bytes"]


def _csv_frame(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text))


def test_cli_sensitivity_on_the_cluster_equals_the_in_process_run(cluster, capsys, one_thread):
    args = ["sensitivity", "--model", "digits_cnn", "--eval-samples", "64", "--batch-size", "32",
            "--format", "csv"]
    assert main(args) == 0
    local = _csv_frame(capsys.readouterr().out)
    assert main([*args, "--dask", cluster.address]) == 0
    captured = capsys.readouterr()
    remote = _csv_frame(captured.out)
    assert len(local) == 2 * local["layer"].nunique() >= 8  # "only" and "all_but" per conv/linear layer
    assert set(local["mode"]) == {"only", "all_but"}
    pd.testing.assert_frame_equal(local, remote, check_exact=True)
    line = next(x for x in captured.err.splitlines() if x.startswith("dask: "))
    print(f"\n{line}")
    assert " jobs on 2 workers; sent " in line


def test_cli_recommend_on_the_cluster_equals_the_in_process_run(cluster, tmp_path, capsys, one_thread):
    args = ["recommend", "--model", "digits_mlp", "--schemes", "per_tensor_affine,per_channel_symmetric",
            "--max-drop", "0", "--eval-samples", "128", "--batch-size", "32", "--format", "csv"]
    assert main([*args, "--out", str(tmp_path / "local.toml")]) == 0
    local = _csv_frame(capsys.readouterr().out)
    assert main([*args, "--out", str(tmp_path / "dask.toml"), "--dask", cluster.address]) == 0
    captured = capsys.readouterr()
    pd.testing.assert_frame_equal(local, _csv_frame(captured.out), check_exact=True)
    assert (tmp_path / "local.toml").read_text() == (tmp_path / "dask.toml").read_text()
    assert " jobs on 2 workers; sent " in captured.err


def test_cli_bench_runs_its_cells_on_the_cluster(cluster, capsys):
    args = ["bench", "--models", "digits_mlp,digits_cnn", "--batches", "8", "--repeat", "1",
            "--calib-batches", "2", "--tasks", "calib_minmax", "--dask", cluster.address]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "digits_mlp" in out and "digits_cnn" in out and "calib_minmax" in out


@pytest.mark.slow
def test_a_worker_killed_mid_sweep_loses_no_result(tmp_path, one_thread):
    model = zoo.load("digits_cnn")
    splits = datasets.digits_splits()
    calib = datasets.calib_batches(splits.calib[0], batch_size=64)
    evals = datasets.batches(splits.test[0][:96], splits.test[1][:96], batch_size=32)
    schemes = SCHEMES.split(",")
    backends = ["fbgemm", "qnnpack"]  # 8 jobs for 2 workers: some still to run after the kill
    local = qcal.compare(model, calib, evals, schemes, backends)
    with running_cluster(tmp_path / "dask") as c, dask_executor(c.address) as executor:
        client = executor._client
        kill, killed = worker_killer(c, client, after=0.5)  # past calibration: a first job has finished
        remote = qcal.compare(model, calib, evals, schemes, backends, executor=executor, progress=kill)
        rescheduled = client.run_on_scheduler(suspicious)
        survivors = [w["name"] for w in client.scheduler_info()["workers"].values()]
    assert_all_stopped(c.processes())
    print(f"\nkilled {killed}; survivors {survivors}; jobs rescheduled after the kill: {rescheduled}")
    assert len(killed) == 1 and killed[0] not in survivors
    assert rescheduled >= 1  # the killed worker was running a job, finished elsewhere
    assert len(remote.summary) == len(local.summary) == 8
    _assert_same_frames(local.frames(), remote.frames())


def test_qcal_dask_runs_the_dashboards_comparison_on_the_cluster(cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("QCAL_DASK", cluster.address)
    seen = []
    run_id, cmp = find_or_compute_zoo_run("digits_mlp", ["per_tensor_affine", "per_channel_symmetric"],
                                          ["fbgemm"], store=tmp_path / "runs.sqlite", eval_samples=64,
                                          progress=lambda f, m: seen.append((f, m)))
    assert cmp.meta["dask"]["workers"] == 2 and cmp.meta["dask"]["jobs"] == 2
    assert Store(tmp_path / "runs.sqlite").load(run_id).meta["dask"] == cmp.meta["dask"]
    assert any("done (2/2)" in m for _, m in seen) and seen[-1][0] == 1.0  # the page's bar


def test_an_unreachable_qcal_dask_is_the_dashboards_one_error(tmp_path, monkeypatch):
    address = f"tcp://127.0.0.1:{free_port()}"
    monkeypatch.setenv("QCAL_DASK", address)
    with pytest.raises(ConnectionError, match=f"cannot reach the Dask scheduler at {address}"):
        find_or_compute_zoo_run("digits_mlp", ["per_tensor_affine"], ["fbgemm"],
                                store=tmp_path / "runs.sqlite")
