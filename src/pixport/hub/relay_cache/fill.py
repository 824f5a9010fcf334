"""A study on its way into the cache: gathered on the event loop, written on the writer thread.

``write``, ``finish`` and ``abort`` are called on the event loop (by the hub's background
fetch of the study) and never block: pieces are gathered (not copied) into batches of about
``WRITE_BATCH`` bytes, and each batch is handed to the cache's writer thread, which writes it
with one ``writev``.  The ``*_file`` methods are that thread's part.  Any failure marks the
fill ``failed``: it is then deleted and never verified.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from typing import TYPE_CHECKING

import structlog

from pixport.archive.multipart import parse_media_type
from pixport.hub.registry import RegisteredManifest
from pixport.hub.relay_cache.entries import EntryHeader

if TYPE_CHECKING:
    from pixport.hub.relay_cache.cache import RelayCache

log = structlog.get_logger("pixport.hub.relay_cache")

WRITE_BATCH = 4 * 1024 * 1024
"""Relayed bytes gathered before they are handed to the writer thread (one ``writev``)."""
DISK_RESERVE = 1024 * 1024 * 1024
"""Free space a fill leaves on the disk (a tenth of a smaller filesystem), for the hub's database."""
_IOV_MAX = 1024


class CacheFill:
    """A study being written to a temporary file; made an entry only once verified."""

    def __init__(self, cache: RelayCache, manifest: RegisteredManifest, content_type: str, length: int) -> None:
        self.manifest = manifest
        self.header = EntryHeader(manifest.manifest_id, content_type, length)
        self.boundary = parse_media_type(content_type).params.get("boundary", "")
        self.path = cache.directory / f"tmp-{uuid.uuid4().hex}.part"
        self.received = 0
        self.failed = False
        """Set when a write failed or the fill gave up: nothing will be kept."""
        self._fd = -1  # the temporary file, open on the writer thread only
        self._cache = cache
        self._batch: list[bytes] = []
        self._batched = 0
        self._closed = False

    # -- on the event loop -------------------------------------------------------------------

    def write(self, chunk: bytes) -> None:
        """Add the next chunk of the body."""
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
            self._cache.submit(self.discard_file)

    def _flush(self) -> None:
        if not self._batch:
            return
        batch, size = self._batch, self._batched
        self._batch, self._batched = [], 0
        if not self._cache.reserve(size):
            self._give_up("the writer is behind")
            return
        self._cache.submit(self.append_file, batch, size)

    def _give_up(self, reason: str) -> None:
        log.warning("relay_cache.skipped", manifest_id=self.manifest.manifest_id, reason=reason)
        self.failed = True
        self.abort()

    # -- on the writer thread ----------------------------------------------------------------

    def open_file(self) -> None:
        """Create the temporary file and write the entry's header, if the disk has room."""
        if self.failed:
            return
        try:
            disk = os.statvfs(self.path.parent)
            reserve = min(DISK_RESERVE, disk.f_blocks * disk.f_frsize // 10)
            if disk.f_bavail * disk.f_frsize - self.header.length < reserve:
                self.failed = True
                log.warning("relay_cache.skipped", manifest_id=self.manifest.manifest_id, reason="disk space")
                return
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            _write_all(self._fd, [self.header.encode()])
        except OSError as exc:
            self._write_failed(exc)

    def append_file(self, batch: list[bytes], size: int) -> None:
        """Append a batch of relayed bytes."""
        try:
            if not self.failed and self._fd >= 0:
                _write_all(self._fd, batch)
        except OSError as exc:
            self._write_failed(exc)
        finally:
            self._cache.release(size)

    def close_file(self) -> None:
        """Close the temporary file (kept for verification)."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def discard_file(self) -> None:
        """Close and delete the temporary file."""
        self.close_file()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _write_failed(self, exc: OSError) -> None:
        self.failed = True
        self.discard_file()
        reason = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        log.warning("relay_cache.write_failed", manifest_id=self.manifest.manifest_id, error=reason)


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
