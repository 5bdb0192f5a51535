"""``--dask ADDRESS`` for any command whose work is a sweep (compare, bench, and the like).

A command adds ``DASK_ARG`` to its arguments, runs its sweep inside
``with cluster_executor(args) as executor:`` (None without ``--dask``: in process) and may
print what the sweep sent with ``report_sweep``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from qcal.cli.args import arg

__all__ = ["DASK_ARG", "cluster_executor", "report_sweep"]

DASK_ARG = arg(
    "--dask", metavar="ADDRESS", default=None,
    help="run the independent evaluations on the Dask cluster whose scheduler is at ADDRESS "
         "(tcp://host:8786, as `dask scheduler` prints it)")


def cluster_executor(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """``with cluster_executor(args) as executor:``: the ``--dask`` cluster's Executor, or None."""
    from qcal.analysis.cluster import dask_executor

    return dask_executor(args.dask) if getattr(args, "dask", None) else contextlib.nullcontext(None)


def report_sweep(stats: dict[str, int] | None) -> None:
    """One stderr line saying what a ``--dask`` sweep sent to its workers (nothing in process)."""
    if stats and stats.get("workers"):
        sends = stats.get("sends", 1)
        times = "once" if sends == 1 else f"{sends} times"
        print(f"dask: {stats['jobs']} jobs on {stats['workers']} workers; sent "
              f"{stats['shared_bytes'] / 2**20:.2f} MiB of model and data to each worker {times}, "
              f"at most {stats['job_bytes']} bytes per job", file=sys.stderr)
