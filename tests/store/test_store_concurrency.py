"""The run store under real processes: concurrent writers, and a writer killed mid-save."""

import inspect
import json
import os
import selectors
import signal
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from qcal.store.store import Store

RUNS_PER_WRITER = 50
META = {"model": "m", "torch_version": "t", "cpu_capability": "c", "vnni": False, "qcal_version": "q"}


def run_frames(writer: int, i: int) -> dict:
    """Frames that differ per writer and run, so a mix-up between runs cannot go unnoticed."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(1000 * writer + i)
    n = 20 + i
    return {
        "summary": pd.DataFrame({"scheme": [f"w{writer}-r{i}-ü"], "value": [rng.random()], "int8_bytes": [i]}),
        "samples": pd.DataFrame({"layer": rng.choice(["a", "b"], n), "fp32": rng.normal(size=n),
                                 "scales": [[float(v)] * (k % 3) for k, v in enumerate(rng.random(n))]}),
    }


_WRITER = textwrap.dedent(inspect.getsource(run_frames)) + textwrap.dedent("""
    import json, sys, time
    from qcal.store.store import Store
    path, writer, count, meta = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
    store = Store(path)
    print("ready", flush=True)
    sys.stdin.readline()  # start together with the other writer
    give_up = time.monotonic() + 60
    for i in range(count):
        # loose lockstep (at most 5 saves ahead of the other writer), so the writes interleave even
        # on a loaded machine; the polling reads run against the other process's writes too
        while i % 5 == 0 and (store.list().title == f"w{1 - writer}").sum() < i - 5:
            assert time.monotonic() < give_up, "the other writer stopped"
            time.sleep(0.002)
        print(store.save(run_frames(writer, i), dict(meta, writer=writer, i=i, title=f"w{writer}")), flush=True)
""")


def _readline(proc: subprocess.Popen, timeout: float = 120.0) -> str:
    """The child's next stdout line; a child silent for ``timeout`` s fails the test, never hangs it."""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            proc.kill()
            pytest.fail(f"a writer process printed nothing for {timeout:.0f} s")
    return proc.stdout.readline()


def test_two_processes_writing_50_runs_each_at_once_leave_100_intact_runs(tmp_path):
    path = tmp_path / "shared" / "runs.sqlite"  # neither the folder nor the file exists yet
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(w), str(RUNS_PER_WRITER), json.dumps(META)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for w in range(2)
    ]
    for proc in writers:
        line = _readline(proc)
        assert line.strip() == "ready", line + proc.stderr.read()
    for proc in writers:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    ids = []
    for proc in writers:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        ids.append(out.split())
    assert [len(w) for w in ids] == [RUNS_PER_WRITER] * 2

    store = Store(path)
    listing = store.list()
    assert len(listing) == 2 * RUNS_PER_WRITER and set(listing.id) == set(ids[0]) | set(ids[1])
    created = {w: [store.load(run_id).meta["created"] for run_id in ids[w]] for w in range(2)}
    assert min(created[0]) < max(created[1]) and min(created[1]) < max(created[0]), created  # they overlapped
    for writer, writer_ids in enumerate(ids):
        for i, run_id in enumerate(writer_ids):
            run = store.load(run_id)
            assert (run.meta["writer"], run.meta["i"]) == (writer, i)
            for name, frame in run_frames(writer, i).items():
                assert_frame_equal(run.frames[name], frame, check_dtype=True, check_exact=True)


_KILLED_WRITER = """
import json, sys, time
import numpy as np, pandas as pd
import qcal.store.store

real_insert = qcal.store.store.insert_run

def insert_then_hang(*args, **kwargs):
    real_insert(*args, **kwargs)  # every row of the run is written, the transaction is still open
    print("inside the transaction", flush=True)
    time.sleep(600)

qcal.store.store.insert_run = insert_then_hang
big = pd.DataFrame({"fp32": np.random.default_rng(0).normal(size=2_000_000), "layer": "conv1"})
qcal.store.store.Store(sys.argv[1]).save({"summary": pd.DataFrame({"v": [1.0]}), "samples": big}, json.loads(sys.argv[2]))
"""


def test_a_writer_killed_mid_save_leaves_no_partial_run_and_prior_runs_intact(tmp_path):
    store = Store(tmp_path / "runs.sqlite")
    prior = {store.save(run_frames(9, i), META): i for i in range(3)}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(store.path), json.dumps(META)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = _readline(proc)
        assert line.strip() == "inside the transaction", proc.stderr.read()
        wal = store.path.with_name(store.path.name + "-wal")
        assert wal.stat().st_size > 4 * 2**20  # the big frame's pages already reached the disk, uncommitted
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    assert set(store.list().id) == set(prior)
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        for table in ("frames", "columns"):
            orphans = conn.execute(f"SELECT count(*) FROM {table} WHERE run_id NOT IN (SELECT id FROM runs)")
            assert orphans.fetchone() == (0,)
    for run_id, i in prior.items():
        for name, frame in run_frames(9, i).items():
            assert_frame_equal(store.load(run_id).frames[name], frame, check_dtype=True, check_exact=True)
    after = store.save({"summary": pd.DataFrame({"v": [np.pi]})}, META)  # the killed writer's lock is gone
    assert store.load(after).summary.v.tolist() == [np.pi] and len(store.list()) == len(prior) + 1
