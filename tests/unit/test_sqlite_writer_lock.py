"""SQLite writers queue on a kernel lock beside the database, not in SQLite's busy sleeps.

Each write is durable before ``store_instances`` returns, its log flushed after the writer's
turn.  A power cut cannot be produced here, so the last tests watch the flush itself:
``os.fdatasync`` is wrapped (the real one still runs), or made to fail as a dying disk would.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid
from sqlalchemy.exc import IntegrityError

from pixport.errors import OutOfResources, StorageUnavailable
from pixport.storage.base import NewInstance, Outcome
from pixport.storage.sqlite import SqliteIndexStore


def new_instance() -> NewInstance:
    document = b'{"00080018": {"vr": "UI"}}'
    return NewInstance(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
        sop_instance_uid=generate_uid(),
        series_instance_uid=generate_uid(),
        study_instance_uid=generate_uid(),
        digest="a" * 64,
        size=10,
        attributes={"transfer_syntax_uid": "1.2.840.10008.1.2.1"},
        metadata_json=document,
        study_json=b"{}",
        series_json=b"{}",
        instance_json=document,
        source="test",
    )


def test_a_writer_waits_for_the_lock_another_process_holds(tmp_path: Path) -> None:
    store = SqliteIndexStore(tmp_path / "index.sqlite")
    lock_file = tmp_path / "index.sqlite.write-lock"
    outcomes: list[list[Outcome]] = []
    finished = threading.Event()

    def write() -> None:
        outcomes.append(store.store_instances([new_instance()]))
        finished.set()

    holder = os.open(lock_file, os.O_RDWR | os.O_CREAT)  # another process's descriptor, in effect
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        writer = threading.Thread(target=write)
        writer.start()
        assert not finished.wait(0.5), "the write went ahead while another writer held the lock"
        assert store.count_instances() == 0
        fcntl.flock(holder, fcntl.LOCK_UN)
        assert finished.wait(30)
        writer.join(30)
    finally:
        os.close(holder)
        store.close()
    assert outcomes == [[Outcome.STORED]]


def test_threads_of_one_process_take_turns(tmp_path: Path) -> None:
    store = SqliteIndexStore(tmp_path / "index.sqlite")
    try:
        with store._writer_lock:
            finished = threading.Event()
            writer = threading.Thread(target=lambda: (store.store_instances([new_instance()]), finished.set()))
            writer.start()
            assert not finished.wait(0.5)
        assert finished.wait(30)
        writer.join(30)
        assert store.count_instances() == 1
    finally:
        store.close()


def test_a_failed_write_leaves_nothing_and_the_next_write_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kept write connection is replaced after a failure; the failed batch left no row."""
    store = SqliteIndexStore(tmp_path / "index.sqlite")
    first = new_instance()
    assert store.store_instances([first]) == [Outcome.STORED]
    broken = new_instance()
    instance_row = SqliteIndexStore._instance_row

    def without_digest(*args: Any) -> dict[str, Any]:
        row = instance_row(*args)
        row["digest"] = None  # NOT NULL: the driver refuses the insert mid-transaction
        return row

    with monkeypatch.context() as patch:
        patch.setattr(store, "_instance_row", without_digest)
        with pytest.raises(IntegrityError):
            store.store_instances([broken])
    assert store.count_instances() == 1
    # Its study and series rows went with it: storing it again creates them anew.
    assert store.store_instances([broken, new_instance()]) == [Outcome.STORED, Outcome.STORED]
    assert store.store_instances([first]) == [Outcome.DUPLICATE]
    assert store.count_instances() == 3
    store.close()


def test_before_commit_runs_in_the_transaction_when_the_lock_is_free(tmp_path: Path) -> None:
    store = SqliteIndexStore(tmp_path / "index.sqlite")
    lock_file = tmp_path / "index.sqlite.write-lock"
    observed: list[bool] = []

    def before_commit() -> None:
        probe = os.open(lock_file, os.O_RDWR)
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            observed.append(True)  # the writer holds the lock: inside its transaction
        else:
            observed.append(False)
        finally:
            os.close(probe)

    assert store.store_instances([new_instance()], before_commit) == [Outcome.STORED]
    assert observed == [True]
    store.close()


def test_before_commit_runs_before_queueing_when_another_writer_holds_the_lock(tmp_path: Path) -> None:
    """A queued writer does its own disk work while it waits, not while others wait for it."""
    store = SqliteIndexStore(tmp_path / "index.sqlite")
    lock_file = tmp_path / "index.sqlite.write-lock"
    called = threading.Event()
    finished = threading.Event()
    holder = os.open(lock_file, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        writer = threading.Thread(target=lambda: (store.store_instances([new_instance()], called.set), finished.set()))
        writer.start()
        assert called.wait(30), "before_commit waited for the lock"
        assert not finished.wait(0.3)
        assert store.count_instances() == 0
        fcntl.flock(holder, fcntl.LOCK_UN)
        assert finished.wait(30)
        writer.join(30)
        assert store.count_instances() == 1
    finally:
        os.close(holder)
        store.close()


def lock_is_free(lock_file: Path) -> bool:
    probe = os.open(lock_file, os.O_RDWR)  # another open file description: flock conflicts with ours
    try:
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(probe)
    return True


def committed_uids(database: Path) -> set[str]:
    reader = sqlite3.connect(database)
    try:
        return {uid for (uid,) in reader.execute("SELECT sop_instance_uid FROM instances")}
    finally:
        reader.close()


def test_the_log_is_flushed_after_commit_with_the_turn_released(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "index.sqlite"
    store = SqliteIndexStore(database)
    item = new_instance()
    seen: list[tuple[bool, bool, bool]] = []
    real_fdatasync = os.fdatasync

    def watching(fd: int) -> None:
        is_log = os.path.samestat(os.fstat(fd), (tmp_path / "index.sqlite-wal").stat())
        visible = item.sop_instance_uid in committed_uids(database)
        seen.append((is_log, visible, lock_is_free(tmp_path / "index.sqlite.write-lock")))
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", watching)
    try:
        assert store.store_instances([item]) == [Outcome.STORED]
    finally:
        store.close()
    # The write-ahead log, once, after COMMIT, while other writers may already go ahead.
    assert seen == [(True, True, True)]


def test_the_write_does_not_return_before_the_flush_has(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SqliteIndexStore(tmp_path / "index.sqlite")
    flushing = threading.Event()
    disk_done = threading.Event()
    returned = threading.Event()
    real_fdatasync = os.fdatasync

    def slow_disk(fd: int) -> None:
        flushing.set()
        assert disk_done.wait(30)
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", slow_disk)

    def write() -> None:
        store.store_instances([new_instance()])
        returned.set()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert flushing.wait(30)
        assert not returned.wait(0.3), "store_instances answered before its commit was on disk"
        disk_done.set()
        assert returned.wait(30)
    finally:
        disk_done.set()
        writer.join(30)
        store.close()


@pytest.mark.parametrize(
    ("code", "error"), [(errno.EIO, StorageUnavailable), (errno.ENOSPC, OutOfResources)], ids=["EIO", "ENOSPC"]
)
def test_a_failed_flush_is_an_error_and_the_next_write_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, error: type[Exception]
) -> None:
    store = SqliteIndexStore(tmp_path / "index.sqlite")
    failing, later = new_instance(), new_instance()
    try:
        with monkeypatch.context() as patch:

            def dying_disk(_fd: int) -> None:
                raise OSError(code, os.strerror(code))

            patch.setattr(os, "fdatasync", dying_disk)
            with pytest.raises(error) as raised:
                store.store_instances([failing])
        assert failing.sop_instance_uid not in str(raised.value)
        # Committed but never answered as stored: offered again, it is the same instance.
        assert store.store_instances([failing, later]) == [Outcome.DUPLICATE, Outcome.STORED]
        assert store.count_instances() == 2
    finally:
        store.close()
