"""Sweeps on an Executor, and on a Dask cluster: connect, send shared inputs once, map small jobs.

A sweep is many independent evaluations of one model on one data set: compare's
(scheme, backend) jobs, a sensitivity scan's (layer, mode) jobs, a benchmark's cells.
``Sweep`` runs ``fn(shared, payload)`` for each payload:

* no executor: in this process, one after the other;
* a plain ``concurrent.futures.Executor``: ``executor.submit(fn, shared, payload)``, as
  any executor takes it (threads share ``shared``; processes pickle it per job);
* a ``distributed`` executor (``client.get_executor()``): ``shared`` is scattered to every
  worker ONCE per sweep (one copy per worker, whatever the number of jobs) and each job
  carries only ``fn`` (pickled by reference) and its small payload.

Every job on an executor runs under the client's ``qcal.int8.assumed_cpu()`` (``QCAL_CPU``,
``FBGEMM_ENABLE_INSTRUCTIONS``, else the client's hardware), carried with the job: a worker
computes what the client would, whatever its own environment and CPU.

Results come back in payload order, whatever order the jobs finish in, so frames built from
them are identical to the in-process run. Progress is reported as jobs finish on the
cluster. When a worker dies mid-sweep, Dask's scheduler reschedules the jobs it was running
(and recomputes results it held) on the other workers, up to
``distributed.scheduler.allowed-failures`` deaths per job (3 by default), independently of
``retries`` (which re-runs jobs that raised); the broadcast copy of ``shared`` survives on
the other workers.

``connect`` / ``dask_executor`` / ``env_executor`` turn a scheduler address (``--dask``,
``QCAL_DASK``) into an executor, with one clear error when the cluster cannot be reached.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from qcal.int8.cpu.isa import AssumedCpu, assumed_cpu, emulating

__all__ = ["ENV_VAR", "Sweep", "SweepStats", "connect", "dask_executor", "env_executor",
           "is_distributed", "run_sweep"]

ENV_VAR = "QCAL_DASK"
CONNECT_TIMEOUT_S = 20.0  # a scheduler on a busy machine can take seconds to answer
Progress = Callable[[float, str], None]
_INSTALL = "pip install -r requirements.txt (it pins dask[distributed])"


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as err:
        raise ImportError(f"running on a Dask cluster needs the distributed package: {_INSTALL}") from err
    return distributed


def _client_of(executor: cf.Executor | None) -> Any:
    """The ``distributed.Client`` behind ``client.get_executor()``, else None."""
    if executor is None or "distributed" not in sys.modules:
        return None  # a distributed executor implies distributed is imported
    from distributed.cfexecutor import ClientExecutor

    # ClientExecutor keeps its client in a private attribute; there is no public accessor.
    return executor._client if isinstance(executor, ClientExecutor) else None


def is_distributed(executor: cf.Executor | None) -> bool:
    """Whether ``executor`` runs on a Dask cluster (``client.get_executor()``)."""
    return _client_of(executor) is not None


def _check_reachable(address: str, timeout: float) -> None:
    """Fail fast with the OS's reason (refused, unknown host) before Client waits out its timeout."""
    from distributed.comm.addressing import get_address_host_port, parse_address

    scheme, _ = parse_address(address)
    if scheme not in ("tcp", "tls", "ws", "wss"):
        return
    host, port = get_address_host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ConnectionError(f"cannot reach the Dask scheduler at {address}: {reason}; start one "
                              "with `dask scheduler` and pass the address it prints") from None


def connect(address: str, *, timeout: float = CONNECT_TIMEOUT_S) -> Any:
    """A ``distributed.Client`` connected to the scheduler at ``address``, with a worker.

    Args:
        address: the scheduler's address, as ``dask scheduler`` prints it
            (``tcp://10.0.0.5:8786``; ``host:port`` means tcp).
        timeout: seconds to wait for the scheduler, then for its first worker.

    Raises:
        ValueError: a malformed address.
        ConnectionError: the scheduler cannot be reached, or has no worker, within ``timeout``.
        ImportError: the ``distributed`` package is not installed.
    """
    distributed = _distributed()
    address = str(address).strip()
    try:
        _check_reachable(address, timeout)
    except ValueError as err:
        raise ValueError(f"bad Dask scheduler address {address!r}: {err}; expected tcp://HOST:PORT") from None
    try:
        client = distributed.Client(address, timeout=timeout, set_as_default=False)
    except OSError as err:
        raise ConnectionError(f"cannot reach the Dask scheduler at {address} within {timeout:g} s: "
                              f"{err}") from None
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (OSError, TimeoutError):
        client.close()
        raise ConnectionError(f"the Dask scheduler at {address} has no worker after {timeout:g} s; "
                              f"start some with `dask worker {address}`") from None
    return client


@contextlib.contextmanager
def dask_executor(address: str, *, timeout: float = CONNECT_TIMEOUT_S) -> Iterator[cf.Executor]:
    """``with dask_executor("tcp://host:8786") as executor:``: the cluster's Executor, closed after.

    Jobs are submitted impure (never deduplicated by Dask against earlier sweeps).
    """
    client = connect(address, timeout=timeout)
    try:
        yield client.get_executor(pure=False)
    finally:
        client.close()


def env_executor(environ: dict[str, str] | None = None) -> contextlib.AbstractContextManager:
    """The executor ``$QCAL_DASK`` names (see ``dask_executor``), or None when it is unset."""
    address = (os.environ if environ is None else environ).get(ENV_VAR, "").strip()
    return dask_executor(address) if address else contextlib.nullcontext(None)


@dataclass(frozen=True)
class SweepStats:
    """What a sweep sent to the workers, in serialized bytes.

    The shared inputs (``shared_bytes``, the largest if sent more than once) went to each of
    ``workers`` workers ``sends`` times: once per sweep, again only when a search replaced
    them (a recipe that needed one more calibration pass); each of ``jobs`` jobs sent at
    most ``job_bytes``. In process (or on a plain executor) ``workers`` is 0.
    """

    workers: int
    shared_bytes: int
    jobs: int
    job_bytes: int
    sends: int = 0

    @property
    def sent_bytes(self) -> int:
        """An upper bound of the bytes sent to workers: shared once per worker and send, plus the jobs."""
        return self.sends * self.workers * self.shared_bytes + self.jobs * self.job_bytes


def _serialized_size(obj: Any) -> int:
    """The bytes Dask puts on the wire for ``obj`` (its own serialization and compression)."""
    from distributed.protocol.serialize import serialize_bytelist

    return sum(memoryview(frame).nbytes for frame in serialize_bytelist(obj))


class Sweep:
    """Shared inputs sent once, then any number of ``map`` calls over small payloads.

    Use as a context manager: entering scatters ``shared`` to every worker of a distributed
    executor; leaving releases it. A search that runs several rounds (recommend) keeps one
    Sweep open across them.
    """

    def __init__(self, executor: cf.Executor | None, shared: Any) -> None:
        self.executor, self.shared = executor, shared
        self._client = _client_of(executor)
        self._remote: Any = None
        self.stats = SweepStats(workers=0, shared_bytes=0, jobs=0, job_bytes=0)

    def __enter__(self) -> Sweep:
        self._send()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._remote is not None:
            self._remote.release()
            self._remote = None

    def _send(self) -> None:
        if self._client is None:
            return
        # In a list, so that a dict or list of inputs travels as ONE object (one key).
        (self._remote,) = self._client.scatter([self.shared], broadcast=True, hash=False)
        workers = len(self._client.who_has(self._remote).get(self._remote.key, ()))
        self.stats = replace(self.stats, workers=max(self.stats.workers, workers), sends=self.stats.sends + 1,
                             shared_bytes=max(self.stats.shared_bytes, _serialized_size(self.shared)))

    def resend(self, shared: Any) -> None:
        """Replace the shared inputs for the next ``map`` calls (sent again, counted in ``sends``)."""
        self.__exit__()
        self.shared = shared
        self._send()

    def map(self, fn: Callable[[Any, Any], Any], payloads: Sequence[Any], *,
            progress: Progress | None = None, describe: Callable[[Any], str] = str) -> list[Any]:
        """``[fn(shared, p) for p in payloads]``, spread over the executor, in payload order.

        Args:
            fn: a module-level function (workers import it by name).
            payloads: small picklable values, one per job.
            progress: ``progress(fraction of jobs done, message)``, called as jobs finish.
            describe: a job's name in progress messages.
        """
        report = progress or (lambda fraction, message: None)
        n = len(payloads)
        if self.executor is None:
            out = []
            for i, p in enumerate(payloads):
                report(i / max(n, 1), f"{describe(p)} ({i + 1}/{n})")
                out.append(fn(self.shared, p))
            return out
        shared = self.shared if self._remote is None else self._remote
        cpu = assumed_cpu()
        futures = {self.executor.submit(_run_job, fn, shared, p, cpu): i for i, p in enumerate(payloads)}
        if self._remote is not None:
            job_bytes = max((_serialized_size((_run_job, fn, p, cpu)) for p in payloads), default=0)
            self.stats = replace(self.stats, jobs=self.stats.jobs + n, job_bytes=max(self.stats.job_bytes, job_bytes))
        results: list[Any] = [None] * n
        try:
            for done, fut in enumerate(cf.as_completed(futures), 1):
                i = futures[fut]
                results[i] = fut.result()
                report(done / n, f"{describe(payloads[i])}: done ({done}/{n})")
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
        return results


def _run_job(fn: Callable[[Any, Any], Any], shared: Any, payload: Any, cpu: AssumedCpu) -> Any:
    """One job, computed as on the client's CPU (not the worker's environment)."""
    with emulating(cpu):
        return fn(shared, payload)


def run_sweep(executor: cf.Executor | None, fn: Callable[[Any, Any], Any], shared: Any,
              payloads: Sequence[Any], *, progress: Progress | None = None,
              describe: Callable[[Any], str] = str) -> tuple[list[Any], SweepStats]:
    """One ``Sweep`` with one ``map``: the results in payload order, and what was sent."""
    with Sweep(executor, shared) as sweep:
        results = sweep.map(fn, payloads, progress=progress, describe=describe)
    return results, sweep.stats
