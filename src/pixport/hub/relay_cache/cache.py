"""The relay cache itself: its index (least recently used first), its threads, and keeping a verified fill.

See the package docstring for what it keeps and why.  Locking: one lock guards the index (the
entries and their total size) and the renames and deletions that change it; serving an entry
reads its open file without it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import structlog

from pixport.archive.multipart import parse_media_type
from pixport.hub.registry import RegisteredManifest
from pixport.hub.relay_cache.entries import CachedStudy, entry_name, manifest_id_of, read_header
from pixport.hub.relay_cache.fill import CacheFill
from pixport.hub.relay_cache.integrity import IntegrityReport, check_body, manifest_digests

log = structlog.get_logger("pixport.hub.relay_cache")

FOLDER = "relay-cache"
"""The cache's folder inside ``hub.data_dir``."""
MAX_PENDING = 64 * 1024 * 1024
"""Relayed bytes waiting for the writer thread, at most; past it, a fill gives up (memory stays bounded)."""
BACKGROUND_NICE = 10
"""How much lower the verifier's CPU priority is than the relays' (``nice``)."""


class RelayCache:
    """Whole studies as the gateways sent them, verified against their manifests, LRU-bounded (module docstring)."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        *,
        is_current: Callable[[str], bool],
        on_integrity_failure: Callable[[RegisteredManifest, IntegrityReport], None],
        lock_fd: int = -1,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._is_current = is_current
        self._on_integrity_failure = on_integrity_failure
        self._lock_fd = lock_fd
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, int] = OrderedDict()  # manifest id -> bytes on disk, oldest use first
        self._total = 0
        self._pending = 0
        self._jobs: queue.SimpleQueue[tuple[Callable[..., None], tuple[object, ...]] | None] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_jobs, name="relay-cache-writer", daemon=True)
        self._verifier = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="relay-cache-verifier", initializer=_background_priority
        )
        self._readers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="relay-cache-reader")
        self._writer.start()

    @classmethod
    def open(
        cls,
        directory: Path,
        max_bytes: int,
        *,
        is_current: Callable[[str], bool],
        on_integrity_failure: Callable[[RegisteredManifest, IntegrityReport], None],
    ) -> RelayCache | None:
        """Open (creating) the cache folder: stale temporary files deleted, entries listed, over-limit ones evicted.

        None when another process holds the folder (that process has the cache; this one relays only).
        """
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock_fd)
            log.warning("relay_cache.disabled", reason="another process holds the cache folder")
            return None
        cache = cls(
            directory, max_bytes, is_current=is_current, on_integrity_failure=on_integrity_failure, lock_fd=lock_fd
        )
        cache._load()
        return cache

    # -- reads (any thread) ------------------------------------------------------------------

    def find(self, manifest_id: str) -> CachedStudy | None:
        """The entry of ``manifest_id``, opened, and marked as just used; None if there is none (blocking)."""
        with self._lock:
            if manifest_id not in self._entries:
                return None
        path = self.directory / entry_name(manifest_id)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            self._forget(manifest_id)
            return None
        found = read_header(fd)
        if found is None or found[0].manifest_id != manifest_id:
            os.close(fd)
            log.warning("relay_cache.entry_invalid", manifest_id=manifest_id)
            self.discard(manifest_id)
            return None
        with self._lock:
            if manifest_id in self._entries:
                self._entries.move_to_end(manifest_id)
        with contextlib.suppress(OSError):  # recency survives a restart; losing it is harmless
            now = time.time_ns()
            os.utime(fd, ns=(now, now))
        return CachedStudy(fd, found[0], found[1], self._readers)

    def begin(self, manifest: RegisteredManifest, content_type: str, length: int) -> CacheFill | None:
        """A fill for a study about to arrive (as stored, ``length`` bytes); None if it cannot be kept."""
        media = parse_media_type(content_type)
        if media.type != "multipart/related" or not media.params.get("boundary"):
            return None
        try:
            entry_name(manifest.manifest_id)
        except ValueError:
            return None
        fill = CacheFill(self, manifest, content_type, length)
        if len(fill.header.encode()) + length > self.max_bytes:
            log.info("relay_cache.skipped", manifest_id=manifest.manifest_id, reason="larger than the cache")
            return None
        self.submit(fill.open_file)
        return fill

    def discard(self, manifest_id: str) -> None:
        """Remove a manifest's entry (superseded, withdrawn, invalid), if there is one (blocking)."""
        try:
            name = entry_name(manifest_id)
        except ValueError:
            return
        with self._lock:
            size = self._entries.pop(manifest_id, None)
            if size is not None:
                self._total -= size
            with contextlib.suppress(FileNotFoundError):
                (self.directory / name).unlink()
        if size is not None:
            log.info("relay_cache.removed", manifest_id=manifest_id)

    def sweep(self) -> int:
        """Remove the entries of manifests that are no longer current; how many were removed (blocking)."""
        with self._lock:
            known = list(self._entries)
        stale = [manifest_id for manifest_id in known if not self._is_current(manifest_id)]
        for manifest_id in stale:
            self.discard(manifest_id)
        return len(stale)

    def entries(self) -> list[tuple[str, int]]:
        """(manifest id, bytes on disk) of every entry, least recently used first."""
        with self._lock:
            return list(self._entries.items())

    @property
    def total_bytes(self) -> int:
        """Bytes of all entries on disk (headers included)."""
        with self._lock:
            return self._total

    def drain(self) -> None:
        """Wait until every fill handed over so far has been written and verified, or discarded (blocking)."""
        written = threading.Event()
        self.submit(written.set)
        written.wait()
        self._verifier.submit(lambda: None).result()

    def close(self) -> None:
        """Finish the pending work, stop the threads, release the folder (blocking)."""
        self._jobs.put(None)
        self._writer.join()
        self._verifier.shutdown(wait=True)
        self._readers.shutdown(wait=False)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # -- the writer thread -------------------------------------------------------------------

    def submit(self, job: Callable[..., None], *args: object) -> None:
        """Queue ``job(*args)`` for the writer thread (non-blocking; jobs run in order)."""
        self._jobs.put((job, args))

    def backlog(self) -> int:
        """Bytes handed to the writer thread and not written yet (a background fill waits on it)."""
        with self._lock:
            return self._pending

    def reserve(self, size: int) -> bool:
        """Account for ``size`` relayed bytes waiting for the writer; False when too many are waiting."""
        with self._lock:
            if self._pending + size > MAX_PENDING:
                return False
            self._pending += size
            return True

    def _write_jobs(self) -> None:
        while (item := self._jobs.get()) is not None:
            job, args = item
            try:
                job(*args)
            except Exception:  # a failed job must not stop the writer; its fill is dropped
                log.exception("relay_cache.job_failed")

    def release(self, size: int) -> None:
        """``size`` bytes reserved before have been written (or dropped)."""
        with self._lock:
            self._pending -= size

    def finish_fill(self, fill: CacheFill) -> None:
        """Writer thread: the file is complete; the verifier checks it and keeps it, or deletes it."""
        fill.close_file()
        if not fill.failed:
            self._verifier.submit(self._keep_if_intact, fill)

    # -- the verifier thread -----------------------------------------------------------------

    def _keep_if_intact(self, fill: CacheFill) -> None:
        manifest_id = fill.manifest.manifest_id
        try:
            kept = self._verify_and_rename(fill)
        except Exception as exc:  # noqa: BLE001  whatever failed, the entry is not kept and the hub goes on
            with contextlib.suppress(FileNotFoundError):
                fill.path.unlink()
            log.warning("relay_cache.not_kept", manifest_id=manifest_id, error=type(exc).__name__)
            return
        if kept and not self._is_current(manifest_id):
            self.discard(manifest_id)  # superseded or withdrawn while it was relayed

    def _verify_and_rename(self, fill: CacheFill) -> bool:
        manifest_id = fill.manifest.manifest_id
        with fill.path.open("rb", buffering=0) as stream:
            stream.seek(len(fill.header.encode()))
            report = check_body(stream, fill.header.length, fill.boundary, manifest_digests(fill.manifest.token))
            if report.ok:
                os.fsync(stream.fileno())
        if not report.ok:
            fill.path.unlink()
            log.warning("relay_cache.integrity_failed", manifest_id=manifest_id, **report.counts())
            try:
                self._on_integrity_failure(fill.manifest, report)
            except Exception:  # reported in the log above in any case
                log.exception("relay_cache.integrity_report_failed", manifest_id=manifest_id)
            return False
        size = fill.path.stat().st_size
        with self._lock:
            fill.path.replace(self.directory / entry_name(manifest_id))
            replaced = self._entries.pop(manifest_id, None)
            self._total += size - (replaced or 0)
            self._entries[manifest_id] = size
            evicted = self._evict()
        _fsync_directory(self.directory)
        log.info("relay_cache.stored", manifest_id=manifest_id, bytes=size, evicted=len(evicted))
        for old, old_size in evicted:
            log.info("relay_cache.evicted", manifest_id=old, bytes=old_size)
        return True

    # -- bookkeeping -------------------------------------------------------------------------

    def _evict(self) -> list[tuple[str, int]]:
        """With the lock held: delete least recently used entries until the cache fits its limit."""
        evicted = []
        while self._total > self.max_bytes and len(self._entries) > 1:
            manifest_id, size = self._entries.popitem(last=False)
            self._total -= size
            with contextlib.suppress(FileNotFoundError):
                (self.directory / entry_name(manifest_id)).unlink()
            evicted.append((manifest_id, size))
        return evicted

    def _forget(self, manifest_id: str) -> None:
        with self._lock:
            size = self._entries.pop(manifest_id, None)
            if size is not None:
                self._total -= size

    def _load(self) -> None:
        found: list[tuple[int, str, int]] = []
        for path in self.directory.iterdir():
            if path.name.startswith("tmp-"):
                path.unlink(missing_ok=True)  # a relay cut short by a crash or a kill
                continue
            manifest_id = manifest_id_of(path.name)
            if manifest_id is None:
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                header = read_header(fd)
                stat = os.fstat(fd)
            finally:
                os.close(fd)
            if header is None or header[0].manifest_id != manifest_id:
                path.unlink(missing_ok=True)
                continue
            found.append((stat.st_mtime_ns, manifest_id, stat.st_size))
        with self._lock:
            for _, manifest_id, size in sorted(found):
                self._entries[manifest_id] = size
                self._total += size
            evicted = self._evict()
        log.info("relay_cache.opened", entries=len(found) - len(evicted), bytes=self.total_bytes, evicted=len(evicted))


def _background_priority() -> None:
    """Lower the calling thread's CPU priority: verifying a study must not slow the relays (Linux: per thread)."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
