"""Sensitivity and recommend sweeps on a real Dask cluster (a `dask scheduler` and `dask worker`
processes on loopback, see ``dask_cluster``): what they send, a worker lost mid-scan, and the
client's CPU model (``QCAL_CPU``) on workers that do not have it.

torch runs on one thread here, as on the workers, so frames are identical value for value
(see test_cluster.py).
"""

import os

import pandas as pd
import pytest
from dask_cluster import assert_all_stopped, running_cluster, suspicious, worker_killer

import qcal
from qcal.analysis.cluster import SweepStats, dask_executor
from qcal.int8.cpu.isa import assumed_cpu
from qcal.zoo import datasets, zoo

distributed = pytest.importorskip("distributed")

JOB_BYTES_BOUND = 4096  # a job is (recipe, layer) plus the function's name: a few hundred bytes


def _digits(eval_samples: int):
    splits = datasets.digits_splits()
    calib = datasets.calib_batches(splits.calib[0], batch_size=32)
    x, y = splits.test[0][:eval_samples], splits.test[1][:eval_samples]
    return calib, datasets.batches(x, y, batch_size=32)


@pytest.mark.parametrize("name", ["digits_cnn", "digits_resnet"])
def test_sensitivity_sends_the_calibrated_pass_once_and_small_jobs(cluster, name, one_thread):
    model = zoo.load(name)
    calib, evals = _digits(64)
    local = qcal.sensitivity(model, calib, evals, "per_tensor_affine")
    with dask_executor(cluster.address) as executor:
        remote = qcal.sensitivity(model, calib, evals, "per_tensor_affine", executor=executor)
    pd.testing.assert_frame_equal(local, remote, check_exact=True)
    stats = remote.attrs["dask"]
    sent = SweepStats(**stats)
    print(f"\n{name} sensitivity, {len(local)} evaluations on 2 workers: shared {sent.shared_bytes} bytes "
          f"sent {sent.sends} time(s) to each worker, jobs <= {sent.job_bytes} bytes; {sent.sent_bytes} "
          f"bytes in all")
    # one broadcast per sweep, whatever the number of jobs; ``workers`` counts the copies it placed
    assert stats["workers"] == 2 and stats["sends"] == 1
    assert stats["jobs"] == len(local)  # one job per evaluation
    assert stats["job_bytes"] < JOB_BYTES_BOUND
    assert stats["shared_bytes"] > sum(p.numel() * 4 for p in model.parameters())  # the model is in it


def test_recommend_sends_once_per_calibration_pass_across_its_rounds(cluster, one_thread):
    model = zoo.load("digits_mlp")
    calib, evals = _digits(360)
    evals = [(x, None) for x, _ in evals]  # agreement with fp32: no int8 scheme keeps all 360, so it searches
    # repairs=(): the Dask sweep's own rounds (repaired models are built and scored in process)
    kw = {"schemes": ["per_tensor_symmetric", "per_tensor_affine"], "max_drop": 0.0, "repairs": ()}
    local = qcal.recommend(model, calib, evals, **kw)
    with dask_executor(cluster.address) as executor:
        remote = qcal.recommend(model, calib, evals, executor=executor, **kw)
    print(f"\nrecommend digits_mlp: {remote.evaluations} evaluations, {remote.passes} pass(es): {remote.dask}")
    pd.testing.assert_frame_equal(local.steps, remote.steps, check_exact=True)
    assert local.recipe == remote.recipe
    assert remote.dask["sends"] == remote.passes  # not once per round: the rounds reuse it
    assert remote.dask["jobs"] == remote.evaluations > len(kw["schemes"])  # more than one round
    assert remote.dask["job_bytes"] < JOB_BYTES_BOUND


def test_the_clients_qcal_cpu_decides_on_workers_without_it(cluster, monkeypatch, one_thread):
    with dask_executor(cluster.address) as executor:
        client = executor._client
        worker_env = set(client.run(lambda: os.environ.get("QCAL_CPU")).values())
        worker_isa = set(client.run(lambda: assumed_cpu().isa).values())
        assert worker_env == {None} and len(worker_isa) == 1  # the workers know only their own CPU
        (own,) = worker_isa
        other = "avx2" if own != "avx2" else "avx512_vnni"
        model = zoo.load("digits_cnn")
        calib, evals = _digits(64)
        # qnnpack_default's full-range activations make FBGEMM's int16 pairs saturate without VNNI
        args = (model, calib, evals, "qnnpack_default", "fbgemm")
        monkeypatch.setenv("QCAL_CPU", own)
        as_on_workers = qcal.sensitivity(*args)
        monkeypatch.setenv("QCAL_CPU", other)
        local = qcal.sensitivity(*args)
        remote = qcal.sensitivity(*args, executor=executor)
    differing = int((local[["value", "sqnr_db"]] != as_on_workers[["value", "sqnr_db"]]).to_numpy().sum())
    print(f"\nclient QCAL_CPU={other}, workers {own}: {differing} values differ between the two CPUs")
    assert differing > 0  # the CPU model matters for this scan, so the equality below says something
    pd.testing.assert_frame_equal(local, remote, check_exact=True)


@pytest.mark.slow
def test_a_worker_killed_mid_sensitivity_scan_loses_no_result(tmp_path, one_thread):
    model = zoo.load("digits_cnn")
    calib, evals = _digits(192)  # 10 jobs of several batches each: most still to run after the kill
    local = qcal.sensitivity(model, calib, evals, "per_tensor_affine")
    with running_cluster(tmp_path / "dask") as c, dask_executor(c.address) as executor:
        client = executor._client
        kill, killed = worker_killer(c, client, after=0.3)  # sensitivity reports its jobs past 0.3
        remote = qcal.sensitivity(model, calib, evals, "per_tensor_affine", executor=executor, progress=kill)
        rescheduled = client.run_on_scheduler(suspicious)
        survivors = [w["name"] for w in client.scheduler_info()["workers"].values()]
    assert_all_stopped(c.processes())
    print(f"\nkilled {killed}; survivors {survivors}; jobs rescheduled: {rescheduled}; {remote.attrs['dask']}")
    assert len(killed) == 1 and killed[0] not in survivors
    assert rescheduled >= 1  # the killed worker was running a job, finished on the other
    pd.testing.assert_frame_equal(local, remote, check_exact=True)


class _TestFailed(Exception):
    pass


@pytest.mark.slow
def test_a_failing_test_still_stops_every_process_it_started(tmp_path):
    started = []
    with pytest.raises(_TestFailed), running_cluster(tmp_path / "dask", n_workers=1) as c:
        started.append(c)
        raise _TestFailed
    assert_all_stopped(started[0].processes())
