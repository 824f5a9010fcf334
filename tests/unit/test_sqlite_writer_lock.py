"""SQLite writers queue on a kernel lock beside the database, not in SQLite's busy sleeps."""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid
from sqlalchemy.exc import IntegrityError

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
