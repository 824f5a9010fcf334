"""The embedded index: SQLite in WAL mode, shared safely by several server processes.

Writers take turns (``WriterLock``); each write transaction is durable before
``store_instances`` returns, but the write-ahead log is flushed after the turn is passed on,
not inside it.  With ``synchronous=FULL`` SQLite fsyncs the log in COMMIT, while it holds the
write lock: with four associations on two listener processes, the lock was held 1.29 ms per
small instance, 0.82 ms of it in COMMIT (the log's fsync queueing behind the other
associations' blob fsyncs), and the lock, not the CPU, capped ingest (the machine idled 26%
of the time).  The write connection runs ``synchronous=NORMAL`` (no sync in COMMIT; SQLite
still syncs the log before every checkpoint and the database after it, so a committed
transaction is never lost to a checkpoint), and ``_make_durable`` fdatasyncs the log file once
the turn is released.  The log is appended in commit order, so that flush also covers every
earlier commit, and a later writer's flush covers ours: a transaction that read our rows can
only be durable if ours is.  Until our flush returns, other connections can see the rows of a
C-STORE that is not yet answered; a crash in that window loses them with the answer never
sent, and the blob (made durable before the commit) stays unindexed, as after any crash
between the two.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.exc import DBAPIError

from pixport.errors import StorageUnavailable, storage_error
from pixport.storage.sql import SqlIndexStore


def _engine(path: Path, *, immediate: bool, synchronous: str) -> Engine:
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 60, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # The writer's NORMAL leaves the flush of each commit to ``_make_durable`` (module doc).
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA case_sensitive_like=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writers take the lock up front so that two processes never deadlock upgrading.
        # On the driver's connection directly: exec_driver_sql's execution context cost more
        # than the BEGIN itself.  Its errors are wrapped as SQLAlchemy wraps them.
        try:
            conn.connection.dbapi_connection.execute(begin)
        except sqlite3.Error as exc:
            raise DBAPIError.instance(begin, (), exc, sqlite3.Error) from exc

    return engine


class WriterLock:
    """One writer at a time across threads and processes, waiting in the kernel, not in sleeps.

    SQLite lets one writer in; the others retry in its busy handler, which sleeps 1, 2, 5, 10…
    ms between tries.  With several listener processes each committing an instance every few
    milliseconds, those sleeps made four associations slower than one.  Writers queue here
    instead (a thread lock, then flock(2) on a file beside the database, released the moment
    the holder commits), so BEGIN IMMEDIATE finds the database free.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._threads = threading.Lock()
        self._fd: int | None = None

    def acquire(self, *, blocking: bool = True) -> bool:
        """Take the lock; without ``blocking``, only if it is free now (returns whether taken)."""
        if not self._threads.acquire(blocking=blocking):
            return False
        try:
            if self._fd is None:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._threads.release()
            return False
        except BaseException:
            self._threads.release()
            raise
        return True

    def release(self) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def close(self) -> None:
        with self._threads:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class SqliteIndexStore(SqlIndexStore):
    """Index in one SQLite file.

    Writers take turns (``WriterLock``), so one connection serves every write transaction of
    the process, kept open: checking a connection out of the pool and resetting it on return
    cost more than the statements of a one-instance C-STORE.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._writer_lock = WriterLock(path.with_name(path.name + ".write-lock"))
        self._write_connection: Connection | None = None
        self._wal_path = path.with_name(path.name + "-wal")
        super().__init__(
            _engine(path, immediate=False, synchronous="FULL"),
            insert,
            write_engine=_engine(path, immediate=True, synchronous="NORMAL"),
        )
        self.create_schema()

    @contextmanager
    def _writer_turn(self, before_commit: Callable[[], None] | None) -> Iterator[Callable[[], None] | None]:
        """The writer lock; ``before_commit`` runs inside the transaction only if the lock was free.

        A C-STORE's blob renames and directory fsyncs (``before_commit``) overlap its index
        statements when nobody waits for the lock.  When another writer holds it, they run
        first, outside: otherwise every queued writer would also wait for this one's disk.
        """
        if before_commit is not None and not self._writer_lock.acquire(blocking=False):
            before_commit()
            before_commit = None
            self._writer_lock.acquire()
        elif before_commit is None:
            self._writer_lock.acquire()
        try:
            yield before_commit
        finally:
            self._writer_lock.release()

    @contextmanager
    def _write_transaction(self) -> Iterator[Connection]:
        # Only ever called holding the writer lock (``store_instances``).
        if self._write_connection is None:
            self._write_connection = self.write_engine.connect()
        conn = self._write_connection
        try:
            with conn.begin():
                yield conn
        except BaseException:
            # A failed transaction may leave the connection unusable (disk full, I/O error):
            # the next writer starts from a fresh one.
            self._write_connection = None
            with contextlib.suppress(Exception):
                conn.close()
            raise

    def _make_durable(self) -> None:
        """Flush (fdatasync) the write-ahead log, which holds the transaction just committed (module doc).

        Opened by name each time (a few microseconds against the flush's few hundred): the file
        at that path is the log our frames went to, or, if every connection closed since, the
        log was checkpointed into the synced database and removed (nothing left to flush).
        """
        try:
            fd = os.open(self._wal_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _storage_error(exc) from exc
        try:
            os.fdatasync(fd)
        except OSError as exc:
            raise _storage_error(exc) from exc
        finally:
            os.close(fd)

    def close(self) -> None:
        with self._writer_lock:
            if self._write_connection is not None:
                self._write_connection.close()
                self._write_connection = None
        super().close()
        self._writer_lock.close()


def _storage_error(exc: OSError) -> StorageUnavailable:
    return storage_error(exc, full="no space left for the index", failed="index log not flushed")
