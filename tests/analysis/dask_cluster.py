"""A real Dask cluster on loopback for the tests: a `dask scheduler` and `dask worker` processes
(not a thread LocalCluster), each in its own process group, every one stopped on the way out,
also when the test fails."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cluster_jobs

import qcal
from qcal.analysis.cluster import connect

REPO = Path(qcal.__file__).resolve().parents[1]
JOBS = Path(cluster_jobs.__file__).resolve().parent
START_TIMEOUT_S = 180  # two cores shared with other jobs: importing torch can take a while
STOP_TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    address: str
    scheduler: subprocess.Popen
    workers: dict[str, subprocess.Popen]  # worker name -> its `dask worker` process (nanny)
    logs: Path

    def kill_worker(self, name: str) -> None:
        """SIGKILL the worker's whole process group (nanny and worker): a machine lost."""
        os.killpg(self.workers[name].pid, signal.SIGKILL)

    def processes(self) -> list[subprocess.Popen]:
        return [self.scheduler, *self.workers.values()]


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(JOBS), os.environ.get("PYTHONPATH", "")])}
    env.pop("QCAL_CPU", None)  # the workers' own CPU; a client's QCAL_CPU must reach them with the jobs
    with open(log, "wb") as out:  # the child keeps its own handle
        return subprocess.Popen([sys.executable, "-m", "dask", *args], stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=log.parent,
                                start_new_session=True)  # its own process group, killed whole


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dask scheduler exited: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)
    raise RuntimeError(f"dask scheduler not listening after {START_TIMEOUT_S} s: {log.read_text()[-2000:]}")


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):  # stragglers in the group, and the leader
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=20)


def group_alive(pid: int) -> bool:
    """Whether any process of the group ``pid`` leads still exists (zombies reaped by now count too)."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def assert_all_stopped(procs: list[subprocess.Popen]) -> None:
    """Every process, and every process its group holds (a nanny's worker), is gone."""
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while any(group_alive(p.pid) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.1)  # an orphaned worker is reaped by init, not by us
    assert all(p.returncode is not None for p in procs)
    assert [p.pid for p in procs if group_alive(p.pid)] == []


@contextlib.contextmanager
def running_cluster(folder: Path, n_workers: int = 2):
    """A scheduler and ``n_workers`` one-thread workers on 127.0.0.1; every process stopped after."""
    folder.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []
    try:
        port = free_port()
        address = f"tcp://127.0.0.1:{port}"
        log = folder / "scheduler.log"
        scheduler = _spawn(["scheduler", "--host", "127.0.0.1", "--port", str(port),
                            "--no-dashboard"], log)
        procs.append(scheduler)
        _wait_for_port(port, scheduler, log)
        workers = {}
        for i in range(n_workers):
            name = f"w{i}"
            workers[name] = _spawn(["worker", address, "--name", name, "--nthreads", "1",
                                    "--host", "127.0.0.1", "--no-dashboard",
                                    "--local-directory", str(folder / name)], folder / f"{name}.log")
            procs.append(workers[name])
        client = connect(address, timeout=START_TIMEOUT_S)
        try:
            client.wait_for_workers(n_workers, timeout=START_TIMEOUT_S)
        finally:
            client.close()
        yield Cluster(address, scheduler, workers, folder)
    finally:
        _stop(procs)


def suspicious(dask_scheduler) -> int:
    """Jobs the scheduler saw lose their worker while running (then rescheduled); for ``run_on_scheduler``."""
    return sum(p.suspicious for p in dask_scheduler.task_prefixes.values())


def worker_killer(cluster: Cluster, client, after: float):
    """(progress callback, names killed): once progress passes ``after`` (a job has finished),
    the callback kills a worker that is running a job, mid-sweep."""
    killed: list[str] = []

    def progress(fraction: float, message: str) -> None:
        if fraction > after and "done" in message and not killed:
            names = {a: w["name"] for a, w in client.scheduler_info()["workers"].items()}
            busy = [names[a] for a, keys in client.processing().items() if keys]
            killed.append(busy[0])
            cluster.kill_worker(busy[0])

    return progress, killed
