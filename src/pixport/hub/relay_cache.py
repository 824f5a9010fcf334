"""The hub's relay cache: whole studies, as stored, kept after a verified relay and served again.

A study read through the hub as stored (the gateway's exact bytes: ``multipart/related`` of
``application/dicom`` parts, nothing transcoded) is written, while it is relayed, to a
temporary file ``tmp-<random>.part`` in ``<hub.data_dir>/relay-cache/`` (:meth:`RelayCache.begin`,
:class:`CacheFill`).  The writes happen on one writer thread, in batches, never on the event
loop.  When the body has arrived whole it is checked, on a verifier thread and so off the
request path, against the manifest it was read under (``hub.relay_integrity``): its parts
must be exactly the manifest's instances by SHA-256 and size.  Only then is the file fsynced
and renamed to ``<manifest uuid>.study``, where the next read of that manifest finds it
(:meth:`RelayCache.find`).  A body that does not match is deleted and reported
(``on_integrity_failure``: the gateway served bytes its own signed manifest does not
describe).  A relay cut short (a reader gone, a gateway that broke off), a write that failed
(disk full) or a writer that fell behind: the temporary file is deleted, the relay goes on,
and nothing half-written is ever visible.

An entry is one file: a header line (``PIXPORT-RELAY-CACHE 1 {json}``: the manifest id, the
``Content-Type`` with the gateway's boundary, the body's length) and the body.  One file, so
one rename makes both visible together, and a reader that opened an entry reads it whole even
if it is replaced or evicted meanwhile.  Names are the manifest id's UUID (random, made by the
publishing gateway) or random: never anything from DICOM attributes or patient data.

Keyed by manifest id, an entry is only ever found for the manifest the registry says is
current; the entries of superseded or withdrawn manifests are removed (:meth:`discard`,
:meth:`sweep`).  Bounded by ``hub.relay_cache_max_bytes``: the least recently used entries
are evicted.  Recency is kept in memory and in each entry's mtime, so it survives a restart.
One process uses a cache folder at a time (``flock`` on ``.lock``); another runs without one.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import structlog

from pixport.archive.multipart import parse_media_type
from pixport.hub.registry import RegisteredManifest
from pixport.hub.relay_integrity import IntegrityReport, check_body, manifest_digests

log = structlog.get_logger("pixport.hub.relay_cache")

FOLDER = "relay-cache"
"""The cache's folder inside ``hub.data_dir``."""
SERVE_CHUNK = 1024 * 1024
"""Bytes read from an entry at a time when serving it (the next read overlaps the send)."""
WRITE_BATCH = 1024 * 1024
"""Relayed bytes gathered before they are handed to the writer thread (one ``writev``)."""
MAX_PENDING = 64 * 1024 * 1024
"""Relayed bytes waiting for the writer thread, at most; past it, a fill gives up (memory stays bounded)."""
DISK_RESERVE = 1024 * 1024 * 1024
"""Free space a fill leaves on the disk (less on a small filesystem: a tenth of it), for the hub's database."""
MAGIC = b"PIXPORT-RELAY-CACHE 1 "
MAX_HEADER = 4096
_IOV_MAX = 1024


def entry_name(manifest_id: str) -> str:
    """The file name of a manifest's entry: its UUID; ValueError for an id that is not ``urn:uuid:<uuid>``."""
    text = manifest_id.removeprefix("urn:uuid:")
    if text == manifest_id or str(uuid.UUID(text)) != text:
        raise ValueError("a manifest id is urn:uuid:<lower-case uuid>")
    return f"{uuid.UUID(text).hex}.study"


def _manifest_id(name: str) -> str | None:
    """The manifest id an entry's file name stands for, or None."""
    stem, _, suffix = name.partition(".")
    if suffix != "study" or len(stem) != 32:  # noqa: PLR2004  a UUID in hex
        return None
    try:
        return f"urn:uuid:{uuid.UUID(hex=stem)}"
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class _Header:
    manifest_id: str
    content_type: str
    length: int

    def encode(self) -> bytes:
        fields = {"manifest_id": self.manifest_id, "content_type": self.content_type, "length": self.length}
        return MAGIC + json.dumps(fields, separators=(",", ":")).encode("ascii") + b"\n"


def _read_header(fd: int) -> tuple[_Header, int] | None:
    """An entry's header and where its body starts, if the file is a whole entry."""
    start = os.pread(fd, MAX_HEADER, 0)
    end = start.find(b"\n")
    if not start.startswith(MAGIC) or end < 0:
        return None
    try:
        fields = json.loads(start[len(MAGIC) : end])
        header = _Header(str(fields["manifest_id"]), str(fields["content_type"]), int(fields["length"]))
    except (ValueError, KeyError, TypeError):
        return None
    if os.fstat(fd).st_size != end + 1 + header.length:
        return None
    return header, end + 1


class CachedStudy:
    """An open cache entry: its ``Content-Type`` and length, and its body as chunks."""

    def __init__(self, fd: int, header: _Header, offset: int, readers: ThreadPoolExecutor) -> None:
        self.content_type = header.content_type
        self.length = header.length
        self._fd = fd
        self._offset = offset
        self._readers = readers

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, read in large chunks on a thread while the previous chunk is being sent; closes the file."""
        position, end = self._offset, self._offset + self.length
        pending: Future[bytes] | None = None
        try:
            pending = self._read(position, end)
            while pending is not None:
                chunk = await asyncio.wrap_future(pending)
                if not chunk:
                    raise OSError(errno.EIO, "relay cache entry shorter than its header says")
                position += len(chunk)
                pending = self._read(position, end) if position < end else None
                yield chunk
        finally:
            self._close_after(pending)

    def close(self) -> None:
        """Close the entry without reading it."""
        self._close_after(None)

    def _read(self, position: int, end: int) -> Future[bytes]:
        return self._readers.submit(os.pread, self._fd, min(SERVE_CHUNK, end - position), position)

    def _close_after(self, pending: Future[bytes] | None) -> None:
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        if pending is None:
            os.close(fd)
        else:  # a read still in flight on a thread: close when it is done, not under it
            pending.add_done_callback(lambda _: os.close(fd))


class CacheFill:
    """A study being relayed and written to a temporary file; made an entry only once verified.

    ``write``, ``finish`` and ``abort`` are called on the event loop and never block: bytes
    are gathered into batches and written by the cache's writer thread.
    """

    def __init__(self, cache: RelayCache, manifest: RegisteredManifest, content_type: str, length: int) -> None:
        self.manifest = manifest
        self.header = _Header(manifest.manifest_id, content_type, length)
        self.boundary = parse_media_type(content_type).params.get("boundary", "")
        self.path = cache.directory / f"tmp-{uuid.uuid4().hex}.part"
        self.received = 0
        self.failed = False
        """Set when a write failed or the fill gave up: nothing will be kept."""
        self.fd = -1
        """The temporary file, open on the writer thread only."""
        self._cache = cache
        self._batch: list[bytes] = []
        self._batched = 0
        self._closed = False

    def write(self, chunk: bytes) -> None:
        """Add the next relayed chunk."""
        if self._closed or self.failed:
            return
        self.received += len(chunk)
        if self.received > self.header.length:
            self._give_up("the body is longer than its Content-Length")
            return
        self._batch.append(chunk)
        self._batched += len(chunk)
        if self._batched >= WRITE_BATCH:
            self._flush()

    def finish(self) -> None:
        """The relay got the whole body: write the rest, then verify and keep it (in the background)."""
        if self._closed:
            return
        if self.received != self.header.length:
            self._give_up("the body is shorter than its Content-Length")
            return
        self._flush()
        self._closed = True
        self._cache.submit(self._cache.finish_fill, self)

    def abort(self) -> None:
        """The relay ended before the whole body went through: delete what was written."""
        if not self._closed:
            self._closed = True
            self._batch = []
            self._cache.submit(self._cache.abort_fill, self)

    def _flush(self) -> None:
        if not self._batch:
            return
        batch, size = self._batch, self._batched
        self._batch, self._batched = [], 0
        if not self._cache.reserve(size):
            self._give_up("the writer is behind")
            return
        self._cache.submit(self._cache.write_fill, self, batch, size)

    def _give_up(self, reason: str) -> None:
        log.warning("relay_cache.skipped", manifest_id=self.manifest.manifest_id, reason=reason)
        self.failed = True
        self.abort()


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
        self._verifier = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-cache-verifier")
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
        found = _read_header(fd)
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
        """A fill for a study about to be relayed (as stored, ``length`` bytes); None if it cannot be kept."""
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
        self.submit(self.open_fill, fill)
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

    def open_fill(self, fill: CacheFill) -> None:
        """Writer thread: create the temporary file and write the entry's header, if the disk has room."""
        if fill.failed:
            return
        try:
            disk = os.statvfs(self.directory)
            reserve = min(DISK_RESERVE, disk.f_blocks * disk.f_frsize // 10)
            if disk.f_bavail * disk.f_frsize - fill.header.length < reserve:
                fill.failed = True
                log.warning("relay_cache.skipped", manifest_id=fill.manifest.manifest_id, reason="disk space")
                return
            fill.fd = os.open(fill.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            _write_all(fill.fd, [fill.header.encode()])
        except OSError as exc:
            self._write_failed(fill, exc)

    def write_fill(self, fill: CacheFill, batch: list[bytes], size: int) -> None:
        """Writer thread: append a batch of relayed bytes."""
        try:
            if not fill.failed and fill.fd >= 0:
                _write_all(fill.fd, batch)
        except OSError as exc:
            self._write_failed(fill, exc)
        finally:
            with self._lock:
                self._pending -= size

    def abort_fill(self, fill: CacheFill) -> None:
        """Writer thread: close and delete the temporary file."""
        _close(fill)
        with contextlib.suppress(FileNotFoundError):
            fill.path.unlink()

    def finish_fill(self, fill: CacheFill) -> None:
        """Writer thread: the file is complete; the verifier checks it and keeps it, or deletes it."""
        _close(fill)
        if fill.failed:
            return
        self._verifier.submit(self._keep_if_intact, fill)

    def _write_failed(self, fill: CacheFill, exc: OSError) -> None:
        fill.failed = True
        self.abort_fill(fill)
        reason = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        log.warning("relay_cache.write_failed", manifest_id=fill.manifest.manifest_id, error=reason)

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
            manifest_id = _manifest_id(path.name)
            if manifest_id is None:
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                header = _read_header(fd)
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


def _write_all(fd: int, buffers: list[bytes]) -> None:
    views = [memoryview(b) for b in buffers if b]
    while views:
        written = os.writev(fd, views[:_IOV_MAX])
        if written <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        while views and written >= len(views[0]):
            written -= len(views.pop(0))
        if written:
            views[0] = views[0][written:]


def _close(fill: CacheFill) -> None:
    if fill.fd >= 0:
        fd, fill.fd = fill.fd, -1
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
