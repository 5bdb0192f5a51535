"""The run store: save/list/load/delete, export/import, locations, and its error messages."""

import copy
import os
import re
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
from pandas.testing import assert_frame_equal
from store_cases import META, assert_same_frames, make_frames, read_only

import qcal.int8 as qi
from qcal.store.runs import RunInfo, environment
from qcal.store.store import SCHEMA_VERSION, Store, StoreError, default_store_url


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "runs.sqlite")


def test_saved_run_loads_with_identical_frames_and_meta(store):
    frames = make_frames()
    run = store.load(store.save(frames, META))
    assert_same_frames(run.frames, frames)
    assert {k: run.meta[k] for k in META} == META
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", run.meta["created"])


def test_save_returns_a_short_unique_id(store):
    ids = {store.save({}, META) for _ in range(5)}
    assert len(ids) == 5 and all(re.fullmatch(r"[0-9a-f]{12}", i) for i in ids)


def test_save_fills_in_the_environment_when_the_caller_gave_none(store):
    run = store.load(store.save({}, {"model": "m"}))
    import torch

    assert run.meta["torch_version"] == torch.__version__
    assert run.meta["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    flags = Path("/proc/cpuinfo").read_text().split()
    assert run.meta["vnni"] == ("avx512_vnni" in flags)  # AVX-VNNI alone is not what FBGEMM uses
    assert run.meta["instruction_set"] == qi.instruction_set()
    assert environment()["qcal_version"] == run.meta["qcal_version"]


def test_save_leaves_the_callers_frames_and_meta_untouched(store):
    frames, meta = make_frames(), dict(META, model="m")
    before = copy.deepcopy((frames, meta))
    store.save(frames, meta)
    assert meta == before[1]
    assert_same_frames(frames, before[0])


def test_run_frames_are_attributes_and_info_is_typed(store):
    run = store.load(store.save(make_frames(), META))
    assert run.summary is run.frames["summary"]
    assert run.info == RunInfo.from_meta(META | {"created": run.meta["created"]})
    assert run.info.schemes == ("per_tensor_affine", "fbgemm_default")
    with pytest.raises(AttributeError, match=r"has no attribute or frame 'sumary'; its frames are \['histograms'"):
        _ = run.sumary
    assert copy.deepcopy(run).summary.equals(run.summary)


def test_run_info_saves_as_metadata(store):
    info = RunInfo(model="m", schemes=("a", "b"), backends=("fbgemm",), title="t")
    run = store.load(store.save({}, info))
    assert run.meta["schemes"] == ["a", "b"] and run.meta["model"] == "m" and run.meta["title"] == "t"
    assert run.info.schemes == ("a", "b") and run.info.torch_version == environment()["torch_version"]


def test_any_frame_names_and_columns_are_stored(store):
    frames = {"my new frame": pd.DataFrame({"anything": [1, 2], "x y": ["a", "b"]}), "empty": pd.DataFrame()}
    assert_same_frames(store.load(store.save(frames, META)).frames, frames)


def test_list_has_one_row_per_run_newest_first(store):
    first = store.save(make_frames(), dict(META, created="2026-01-01T00:00:00.000000+00:00"))
    second = store.save({}, dict(META, title="two", created="2026-02-01T00:00:00.000000+00:00"))
    listing = store.list()
    assert listing.id.tolist() == [second, first]
    row = listing.iloc[1]
    assert row.model == "digits_mlp" and row.schemes == "per_tensor_affine,fbgemm_default"
    assert row.frames == "summary,layers,scales,histograms,samples,qm_layers"
    assert row.title == META["title"] and row.torch_version == "2.13.0+cpu"


def test_an_empty_or_missing_store_lists_no_runs_and_creates_nothing(tmp_path):
    store = Store(tmp_path / "nowhere" / "runs.sqlite")
    assert store.list().empty and "abc" not in store
    assert not (tmp_path / "nowhere").exists()


def test_delete_removes_the_run_and_all_its_rows(store):
    keep, gone = store.save(make_frames(1), META), store.save(make_frames(2), META)
    store.delete(gone)
    assert store.list().id.tolist() == [keep] and gone not in store
    with sqlite3.connect(store.path) as conn:
        for table, key in [("runs", "id"), ("frames", "run_id"), ("columns", "run_id")]:
            assert conn.execute(f"SELECT count(*) FROM {table} WHERE {key} = ?", (gone,)).fetchone() == (0,)
    assert_same_frames(store.load(keep).frames, make_frames(1))


def test_missing_run_id_message_names_the_id_the_store_and_the_list_command(store):
    store.save({}, META)
    for call in (store.load, store.delete, lambda i: store.export(i, store.path.with_name("x.sqlite"))):
        with pytest.raises(StoreError, match=re.escape(f"no run 'abc' in {store.path}; `python -m qcal runs list` shows the ids")):
            call("abc")


def test_export_then_import_into_another_store_round_trips_the_run(store, tmp_path):
    frames = make_frames()
    run_id = store.save(frames, META)
    store.save(make_frames(5), META)  # another run that must not travel with the export
    exported = store.export(run_id, tmp_path / "shared" / "run.qcalrun")
    other = Store(tmp_path / "other.sqlite")
    assert other.import_(exported) == run_id
    imported = other.load(run_id)
    assert_same_frames(imported.frames, frames)
    assert imported.meta == store.load(run_id).meta
    assert other.list().id.tolist() == [run_id]


def test_exported_file_is_a_standalone_store_with_the_same_schema_and_one_run(store, tmp_path):
    run_id = store.save(make_frames(), META)
    exported = store.export(run_id, tmp_path / "run.qcalrun")
    assert sorted(os.listdir(tmp_path)) == ["run.qcalrun", "runs.sqlite"]  # no -wal/-shm/partial files left
    schema = "SELECT type, name, sql FROM sqlite_master ORDER BY name"
    with sqlite3.connect(store.path) as a, sqlite3.connect(exported) as b:
        assert a.execute(schema).fetchall() == b.execute(schema).fetchall()
        assert b.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        assert b.execute("SELECT value FROM qcal_meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    assert Store(exported).list().id.tolist() == [run_id]


def test_export_refuses_to_overwrite_unless_asked(store, tmp_path):
    run_id = store.save({}, META)
    target = tmp_path / "run.qcalrun"
    target.write_text("keep me")
    with pytest.raises(StoreError, match=re.escape(f"{target} already exists; choose another path or pass overwrite=True")):
        store.export(run_id, target)
    assert store.export(run_id, target, overwrite=True) == target and Store(target).list().id.tolist() == [run_id]
    with pytest.raises(StoreError, match="is this store itself; export to another file"):
        store.export(run_id, store.path, overwrite=True)


def test_importing_the_same_run_twice_keeps_one_copy(store, tmp_path):
    run_id = store.save(make_frames(), META)
    exported = store.export(run_id, tmp_path / "run.qcalrun")
    other = Store(tmp_path / "other.sqlite")
    assert [other.import_(exported) for _ in range(3)] == [run_id] * 3
    assert store.import_(exported) == run_id  # back into the store it came from
    assert other.list().id.tolist() == [run_id] and store.list().id.tolist() == [run_id]


def test_import_refuses_an_existing_id_with_different_contents(store, tmp_path):
    run_id = store.save(make_frames(), META)
    exported = store.export(run_id, tmp_path / "run.qcalrun")
    with sqlite3.connect(exported) as conn:  # someone edits the title inside the file
        conn.execute("UPDATE runs SET meta = replace(meta, 'premi', 'PREMI')")
    with pytest.raises(StoreError, match=rf"run '{run_id}' already exists in .* with different contents; delete it first"):
        store.import_(exported)


def test_import_all_merges_every_run_and_import_refuses_a_multi_run_file(store, tmp_path):
    ids = [store.save(make_frames(i), dict(META, created=f"2026-0{i + 1}-01T00:00:00.000000+00:00")) for i in range(3)]
    other = Store(tmp_path / "other.sqlite")
    with pytest.raises(StoreError, match=r"holds 3 runs, not one; use Store.import_all"):
        other.import_(store.path)
    assert other.import_all(store.path) == ids  # oldest first
    for i, run_id in enumerate(ids):
        assert_same_frames(other.load(run_id).frames, make_frames(i))


def test_missing_directory_is_created_on_first_save(tmp_path):
    store = Store(tmp_path / "a" / "b" / "runs.sqlite")
    run_id = store.save({}, META)
    assert (tmp_path / "a" / "b" / "runs.sqlite").is_file() and run_id in store


def test_store_file_records_schema_version_and_uses_wal(store):
    store.save({}, META)
    with sqlite3.connect(store.path) as conn:
        assert dict(conn.execute("SELECT key, value FROM qcal_meta")) == {"schema_version": "1", "application": "qcal"}
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA application_id").fetchone() == (0x7163616C,)


def test_threads_sharing_one_store_each_save_and_load_their_runs(store):
    def work(i):
        run_id = store.save({"summary": make_frames(i)["summary"]}, META)
        return run_id, store.load(run_id).summary

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(24)))
    assert len(store.list()) == 24
    for i, (_, summary) in enumerate(results):
        assert_frame_equal(summary, make_frames(i)["summary"])


# ------------------------------------------------------------------ locations and QCAL_STORE


def test_QCAL_STORE_file_path_is_used_by_default(monkeypatch, tmp_path):
    monkeypatch.setenv("QCAL_STORE", str(tmp_path / "env.sqlite"))
    assert Store().path == tmp_path / "env.sqlite"
    assert default_store_url() == f"sqlite:///{tmp_path / 'env.sqlite'}"
    run_id = Store().save({}, META)
    assert Store(tmp_path / "env.sqlite").list().id.tolist() == [run_id]


def test_QCAL_STORE_sqlite_urls_absolute_and_relative(monkeypatch, tmp_path):
    monkeypatch.setenv("QCAL_STORE", f"sqlite:///{tmp_path}/url%20store.sqlite")  # four slashes: absolute
    assert Store().path == tmp_path / "url store.sqlite"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QCAL_STORE", "sqlite:///rel/runs.sqlite")
    assert Store().path == tmp_path / "rel" / "runs.sqlite"


def test_without_QCAL_STORE_the_store_lives_in_the_data_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("QCAL_STORE", raising=False)
    monkeypatch.delenv("QCAL_DATA_DIR", raising=False)
    import qcal

    assert Store().path == Path(qcal.__file__).resolve().parent.parent / "data" / "runs.sqlite"
    monkeypatch.setenv("QCAL_DATA_DIR", str(tmp_path))
    assert Store().path == tmp_path / "runs.sqlite"


@pytest.mark.parametrize("url", ["sqlite://host/runs.sqlite", "sqlite:///:memory:", "sqlite:///", "folder"])
def test_a_store_location_that_names_no_file_is_refused(url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    with pytest.raises(StoreError, match=r"(is not a file URL|names no file); .*sqlite:///"):
        Store(url)


def test_a_run_id_that_is_not_a_string_is_a_type_error(store):
    store.save({}, META)
    with pytest.raises(TypeError, match=r"a run id is a string such as '3f2a9c0b1d4e', got list \['abc'\]"):
        store.load(["abc"])
    assert ["abc"] not in store


# ------------------------------------------------------------------ broken or read-only stores


def test_a_store_file_that_is_not_a_database_is_named_and_moving_it_away_is_suggested(tmp_path):
    path = tmp_path / "runs.sqlite"
    path.write_bytes(b"this is a text file, not SQLite " * 200)
    expected = rf"the run store {re.escape(str(path))} is corrupted or not an SQLite database \(file is not a database\)\. Move it away \(e\.g\. `mv {re.escape(str(path))} .*\.broken`\)"
    for call in (Store(path).list, lambda: Store(path).save({}, META), lambda: Store(path).load("abc")):
        with pytest.raises(StoreError, match=expected):
            call()


def test_a_malformed_store_file_is_named_and_moving_it_away_is_suggested(store):
    store.save(make_frames(), META)
    with sqlite3.connect(store.path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(store.path.read_bytes())
    data[4096:] = os.urandom(len(data) - 4096)  # keep the header page, scramble the rest
    store.path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=rf"the run store {re.escape(str(store.path))} is corrupted .*Move it away"):
        store.list()


def test_another_applications_database_is_not_taken_for_a_store(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    with pytest.raises(StoreError, match=r"is an SQLite database but not a qcal run store \(its tables are \['users'\]"):
        Store(path).save({}, META)


def test_a_store_from_a_newer_qcal_asks_for_an_upgrade(store):
    store.save({}, META)
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE qcal_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match=r"has run-store schema version 99; this qcal reads versions up to 1: upgrade qcal"):
        store.list()


@pytest.mark.parametrize("where", ["ro/runs.sqlite", "ro/new.sqlite", "ro/sub/runs.sqlite"], ids=["existing store", "new file", "new folder"])
def test_saving_to_a_read_only_location_says_so_and_names_QCAL_STORE(tmp_path, where):
    (tmp_path / "ro").mkdir()
    path = tmp_path / where
    if where == "ro/runs.sqlite":
        Store(path).save({}, META)
    with read_only(tmp_path / "ro"):
        store = Store(path)
        assert len(store.list()) == (1 if path.exists() else 0)  # reading still works
        with pytest.raises(StoreError) as caught:
            store.save({}, META)
    message = str(caught.value)
    assert message.startswith(f"cannot save a run in the run store {path}: the location is read-only (")
    assert message.endswith("Choose a writable store with QCAL_STORE, e.g. `export QCAL_STORE=$HOME/qcal-runs.sqlite` (a file path or a sqlite:/// URL)")


def test_import_all_is_all_or_nothing_when_one_run_conflicts(store, tmp_path):
    source = Store(tmp_path / "source.sqlite")
    fresh = source.save({"a": pd.DataFrame({"v": [1.0]})}, dict(META, created="2026-01-01T00:00:00.000000+00:00"))
    clash = source.save({"a": pd.DataFrame({"v": [2.0]})}, dict(META, created="2026-02-01T00:00:00.000000+00:00"))
    store.import_(source.export(clash, tmp_path / "clash.qcalrun"))
    with sqlite3.connect(source.path) as conn:  # the same id now holds different contents in the source
        conn.execute("UPDATE runs SET meta = replace(meta, 'digits_mlp', 'changed')")
    with pytest.raises(StoreError, match=rf"run '{clash}' already exists .* with different contents"):
        store.import_all(source.path)
    assert fresh not in store and store.list().id.tolist() == [clash]


def test_export_bytes_and_import_bytes_round_trip_a_run_without_files(store, tmp_path):
    frames = make_frames()
    run_id = store.save(frames, META)
    data = store.export_bytes(run_id)
    assert data.startswith(b"SQLite format 3\x00")
    other = Store(tmp_path / "other.sqlite")
    assert other.import_bytes(data) == run_id
    assert_same_frames(other.load(run_id).frames, frames)


def test_import_bytes_refuses_oversize_uploads_before_writing_and_garbage_with_a_store_error(store):
    run_id = store.save(make_frames(), META)
    data = store.export_bytes(run_id)
    with pytest.raises(StoreError, match=r"the uploaded run file is 0\.\d MiB, over the import limit of 0\.0 MiB"):
        store.import_bytes(data, max_bytes=1024)
    with pytest.raises(StoreError):
        store.import_bytes(b"not a run file at all")
    with pytest.raises(StoreError, match="no run"):
        store.export_bytes("doesnotexist")
