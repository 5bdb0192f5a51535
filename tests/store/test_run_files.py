"""Importing run files from others: anything that is not a sound qcal run file is refused, clearly."""

import re
import sqlite3
from contextlib import closing

import pandas as pd
import pytest

from qcal.store.store import Store, StoreError

META = {"model": "m", "title": "t", "torch_version": "t", "cpu_capability": "c", "vnni": False, "qcal_version": "q"}


@pytest.fixture
def exported(tmp_path):
    """A genuine one-run file, as Store.export writes it."""
    source = Store(tmp_path / "source.sqlite")
    run_id = source.save({"summary": pd.DataFrame({"scheme": ["a", "b"], "value": [0.5, 0.25]})}, META)
    return source.export(run_id, tmp_path / "run.qcalrun"), run_id


@pytest.fixture
def target(tmp_path):
    return Store(tmp_path / "target" / "runs.sqlite")


def refused(target: Store, path, pattern: str) -> None:
    with pytest.raises(StoreError, match=pattern):
        target.import_(path)
    assert target.list().empty  # nothing of a refused file reaches the store


def edit(path, *statements: str) -> None:
    with closing(sqlite3.connect(path)) as conn, conn:
        for statement in statements:
            conn.execute(statement)


def test_a_missing_file_is_named(target, tmp_path):
    refused(target, tmp_path / "nope.qcalrun", rf"no run file {re.escape(str(tmp_path / 'nope.qcalrun'))} \(it does not exist")


def test_a_file_that_is_not_sqlite_is_refused_before_opening(target, tmp_path):
    path = tmp_path / "evil.qcalrun"
    path.write_bytes(b"\x80\x04\x95 a pickle, say")
    refused(target, path, rf"{re.escape(str(path))} is not a qcal run file: it is not an SQLite database \(it starts with b'\\x80\\x04")


def test_a_file_over_the_size_cap_is_refused(target, exported):
    path, _ = exported
    refused_cap = path.stat().st_size - 1
    with pytest.raises(StoreError, match=r"is 0\.0 MiB, over the import limit of 0\.0 MiB; pass max_bytes= to accept larger"):
        target.import_(path, max_bytes=refused_cap)
    assert target.import_(path, max_bytes=path.stat().st_size)  # exactly at the cap is fine


def test_a_truncated_file_is_reported_as_corrupted(target, exported):
    path, _ = exported
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    refused(target, path, rf"{re.escape(str(path))} is (a corrupted SQLite file|not a readable qcal run file).*ask for a fresh export")


def test_another_applications_database_is_refused(target, tmp_path):
    path = tmp_path / "app.db"
    edit(path, "CREATE TABLE users (name TEXT)")
    refused(target, path, r"is not a qcal run file: unexpected table 'users' in its schema")


def test_an_empty_sqlite_database_is_refused(target, tmp_path):
    path = tmp_path / "empty.db"
    edit(path, "CREATE TABLE t (x)", "DROP TABLE t")
    refused(target, path, r"is not a qcal run file: it is an empty SQLite database")


@pytest.mark.parametrize(
    ("statement", "kind"),
    [("CREATE TRIGGER t AFTER INSERT ON runs BEGIN DELETE FROM runs; END", "trigger 't'"),
     ("CREATE VIEW v AS SELECT * FROM runs", "view 'v'"),
     ("CREATE INDEX i ON runs(created)", "index 'i'")],
)  # fmt: skip
def test_extra_schema_objects_are_refused(target, exported, statement, kind):
    path, _ = exported
    edit(path, statement)
    refused(target, path, rf"is not a qcal run file: unexpected {kind} in its schema")


def test_a_changed_table_definition_is_refused(target, exported):
    path, _ = exported
    edit(path, "ALTER TABLE runs ADD COLUMN payload BLOB")
    refused(target, path, r"unexpected table 'runs' in its schema")


def test_a_flipped_byte_in_a_frame_is_caught(target, exported):
    path, run_id = exported
    edit(path, "UPDATE columns SET data = X'000000000000F03F0000000000000040' WHERE name = 'value'")
    refused(target, path, rf"frame 'summary' of run '{run_id}' is damaged: checksum mismatch")


def test_a_file_from_a_newer_qcal_asks_for_an_upgrade(target, exported):
    path, _ = exported
    edit(path, "UPDATE qcal_meta SET value = '7' WHERE key = 'schema_version'")
    refused(target, path, r"has run-store schema version 7; this qcal reads versions up to 1: upgrade qcal")


@pytest.mark.parametrize("bad_id", ["../../etc", "a b", "", "x" * 65])
def test_a_run_id_outside_the_safe_alphabet_is_refused(target, exported, bad_id):
    path, _ = exported
    edit(path, *(f"UPDATE {t} SET {c} = '{bad_id}'" for t, c in [("runs", "id"), ("frames", "run_id"), ("columns", "run_id")]))
    refused(target, path, r"holds a run with an invalid id .* \(expected 1-64 letters, digits, _ or -\)")


def test_metadata_that_is_not_an_object_is_refused(target, exported):
    path, run_id = exported
    edit(path, "UPDATE runs SET meta = '[1, 2]'")
    refused(target, path, rf"run '{run_id}' has metadata that is not a JSON object")


def test_a_number_where_text_belongs_is_refused(target, exported):
    path, _ = exported
    edit(path, "UPDATE frames SET layout = 42")
    refused(target, path, r"(is not a valid qcal run file|is damaged)")


def test_one_bad_run_stops_the_whole_import_before_anything_is_written(target, tmp_path):
    source = Store(tmp_path / "many.sqlite")
    good = source.save({"a": pd.DataFrame({"v": [1.0]})}, META)
    bad = source.save({"a": pd.DataFrame({"v": [2.0]})}, META)
    edit(source.path, f"UPDATE columns SET data = X'0000000000000000' WHERE run_id = '{bad}'")
    with pytest.raises(StoreError, match=rf"frame 'a' of run '{bad}' is damaged"):
        target.import_all(source.path)
    assert good not in target and target.list().empty


def test_a_genuine_run_file_imports(target, exported):
    path, run_id = exported
    assert target.import_(path) == run_id
    assert target.load(run_id).summary.value.tolist() == [0.5, 0.25]


def test_import_all_from_a_live_store_sees_commits_still_in_its_wal(target, tmp_path):
    source = Store(tmp_path / "live.sqlite")
    source.save({}, META)
    with closing(sqlite3.connect(source.path)) as reader:  # an open reader keeps the WAL from being checkpointed
        reader.execute("SELECT count(*) FROM runs").fetchone()
        late = source.save({"a": pd.DataFrame({"v": [3.0]})}, META)
        assert source.path.with_name("live.sqlite-wal").stat().st_size > 0
        assert late in target.import_all(source.path)
    assert target.load(late).a.v.tolist() == [3.0]
