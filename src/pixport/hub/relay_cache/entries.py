"""A cache entry's file: its name, its header line, and serving its body.

``<manifest uuid>.study`` holds ``PIXPORT-RELAY-CACHE 1 {"manifest_id", "content_type",
"length"}`` and a newline, then the body exactly as the gateway sent it.  An entry whose
header cannot be read, names another manifest or does not match the file's size is not one.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import uuid
from collections.abc import AsyncGenerator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

MAGIC = b"PIXPORT-RELAY-CACHE 1 "
MAX_HEADER = 4096
SERVE_CHUNK = 1024 * 1024
"""Bytes read from an entry at a time when serving it (the next read overlaps the send)."""
_UUID_HEX = 32


def entry_name(manifest_id: str) -> str:
    """The file name of a manifest's entry: its UUID; ValueError for an id that is not ``urn:uuid:<uuid>``."""
    text = manifest_id.removeprefix("urn:uuid:")
    if text == manifest_id or str(uuid.UUID(text)) != text:
        raise ValueError("a manifest id is urn:uuid:<lower-case uuid>")
    return f"{uuid.UUID(text).hex}.study"


def manifest_id_of(name: str) -> str | None:
    """The manifest id an entry's file name stands for, or None if it is not an entry's name."""
    stem, _, suffix = name.partition(".")
    if suffix != "study" or len(stem) != _UUID_HEX:
        return None
    try:
        return f"urn:uuid:{uuid.UUID(hex=stem)}"
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class EntryHeader:
    """What an entry says of its body."""

    manifest_id: str
    content_type: str
    """The gateway's ``Content-Type``, with its boundary."""
    length: int
    """The body's bytes."""

    def encode(self) -> bytes:
        """The header line."""
        fields = {"manifest_id": self.manifest_id, "content_type": self.content_type, "length": self.length}
        return MAGIC + json.dumps(fields, separators=(",", ":")).encode("ascii") + b"\n"


def read_header(fd: int) -> tuple[EntryHeader, int] | None:
    """An entry's header and where its body starts, if the open file is a whole entry."""
    start = os.pread(fd, MAX_HEADER, 0)
    end = start.find(b"\n")
    if not start.startswith(MAGIC) or end < 0:
        return None
    try:
        fields = json.loads(start[len(MAGIC) : end])
        header = EntryHeader(str(fields["manifest_id"]), str(fields["content_type"]), int(fields["length"]))
    except (ValueError, KeyError, TypeError):
        return None
    if os.fstat(fd).st_size != end + 1 + header.length:
        return None
    return header, end + 1


class CachedStudy:
    """An open cache entry: its ``Content-Type`` and length, and its body as chunks."""

    def __init__(self, fd: int, header: EntryHeader, offset: int, readers: ThreadPoolExecutor) -> None:
        self.content_type = header.content_type
        self.length = header.length
        self._fd = fd
        self._offset = offset
        self._readers = readers

    async def chunks(self) -> AsyncGenerator[bytes, None]:
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
