"""Checking that a relayed study body holds exactly the instances its signed manifest lists.

The relay cache keeps a study only after this check: the
``multipart/related`` body is split into its parts as it is read (:class:`PartDigests`, a
streaming splitter after RFC 2046 5.1: preamble, transport padding, epilogue), each part's
SHA-256 and size are taken, and the parts must equal the manifest's instances by ``sha256``
(of the stored bytes) and ``size``: none missing, none extra (:func:`compare_parts`).  The
manifest was verified when it was registered, so it is read here without its signature.

Only counts come out (:class:`IntegrityReport`): never a UID of a part, nor anything from
inside one.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

from pixport.archive.multipart import MultipartError
from pixport.trust import jws
from pixport.trust.manifest import manifest_from_payload

READ_CHUNK = 1024 * 1024
MAX_HEADER_BYTES = 16 * 1024
_PREAMBLE, _DELIMITED, _HEADERS, _DATA, _EPILOGUE = range(5)

PartDigest = tuple[str, int]
"""A part's (or an instance's) SHA-256 in lower-case hex, and its size in bytes."""


@dataclass(frozen=True, slots=True)
class IntegrityReport:
    """How a relayed body compares with its manifest: counts only."""

    listed: int
    """Instances in the manifest."""
    received: int
    """Parts in the body."""
    matched: int
    """Parts equal (SHA-256 and size) to an instance of the manifest, each instance used once."""
    well_formed: bool
    """The body was complete, closed multipart: every part delimited, the close delimiter there."""

    @property
    def missing(self) -> int:
        """Instances of the manifest that no part matched."""
        return self.listed - self.matched

    @property
    def extra(self) -> int:
        """Parts that matched no instance of the manifest (altered ones among them)."""
        return self.received - self.matched

    @property
    def ok(self) -> bool:
        """The body is exactly the manifest's instances."""
        return self.well_formed and self.missing == 0 and self.extra == 0

    def counts(self) -> dict[str, int | bool]:
        """The report as an audit event's ``detail``."""
        return {
            "listed": self.listed,
            "received": self.received,
            "matched": self.matched,
            "missing": self.missing,
            "extra": self.extra,
            "well_formed": self.well_formed,
        }


def manifest_digests(token: str) -> list[PartDigest]:
    """(sha256, size) of every instance a registered manifest lists (its signature was checked at registration)."""
    manifest = manifest_from_payload(jws.read_payload_unverified(token))
    return [(instance.sha256, instance.size) for instance in manifest.instances]


def compare_parts(parts: Iterable[PartDigest], listed: Iterable[PartDigest], *, well_formed: bool) -> IntegrityReport:
    """Compare the parts of a body with a manifest's instances, as multisets of (sha256, size)."""
    got, want = Counter(parts), Counter(listed)
    return IntegrityReport(
        listed=want.total(), received=got.total(), matched=(got & want).total(), well_formed=well_formed
    )


def check_body(stream: BinaryIO, length: int, boundary: str, listed: Iterable[PartDigest]) -> IntegrityReport:
    """Read ``length`` bytes of a multipart body from ``stream`` and compare its parts with ``listed``."""
    digests = PartDigests(boundary)
    left = length
    well_formed = True
    try:
        while left > 0:
            chunk = stream.read(min(READ_CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            digests.write(chunk)
        parts = digests.finish()
    except MultipartError:
        parts, well_formed = digests.parts, False
    return compare_parts(parts, listed, well_formed=well_formed and left == 0)


class PartDigests:
    """SHA-256 and size of each part of a multipart body fed to it in chunks; memory: one chunk.

    Part data is hashed as it arrives; only the tail that could hold the start of a split
    delimiter is kept back between chunks.  Part headers are skipped (the manifest decides what
    a part is, by its bytes).  :meth:`finish` raises ``MultipartError`` for a body that was not
    closed; a malformed delimiter line raises it from :meth:`write`.
    """

    def __init__(self, boundary: str) -> None:
        self.parts: list[PartDigest] = []
        self._dash_boundary = b"--" + boundary.encode("latin-1")
        self._delimiter = b"\r\n" + self._dash_boundary
        self._buffer = bytearray()
        self._state = _PREAMBLE
        self._hash = hashlib.sha256()
        self._size = 0

    def write(self, chunk: bytes | memoryview) -> None:
        """Feed the next chunk of the body."""
        self._buffer += chunk
        while self._step():
            pass

    def finish(self) -> list[PartDigest]:
        """The parts' digests, once the body has ended; ``MultipartError`` if it was not closed."""
        if self._state != _EPILOGUE:
            msg = "the body ended before its close delimiter"
            raise MultipartError(msg)
        return self.parts

    def _step(self) -> bool:
        """Consume what can be consumed; False when more input is needed."""
        buffer = self._buffer
        if self._state == _PREAMBLE:
            at = buffer.find(self._dash_boundary)
            if at < 0:
                del buffer[: max(0, len(buffer) - len(self._dash_boundary) + 1)]
                return False
            del buffer[: at + len(self._dash_boundary)]
            self._state = _DELIMITED
            return True
        if self._state == _DELIMITED:
            return self._after_delimiter()
        if self._state == _HEADERS:
            if buffer.startswith(b"\r\n"):  # a part without headers
                end = 0
            else:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(buffer) > MAX_HEADER_BYTES:
                        msg = "part headers too long"
                        raise MultipartError(msg)
                    return False
                end += 2
            del buffer[: end + 2]
            self._hash, self._size = hashlib.sha256(), 0
            self._state = _DATA
            return True
        if self._state == _DATA:
            at = buffer.find(self._delimiter)
            if at < 0:
                self._consume(len(buffer) - (len(self._delimiter) - 1))
                return False
            self._consume(at)
            self.parts.append((self._hash.hexdigest(), self._size))
            del buffer[: len(self._delimiter)]
            self._state = _DELIMITED
            return True
        buffer.clear()  # the epilogue is ignored
        return False

    def _after_delimiter(self) -> bool:
        """After a delimiter: ``--`` closes the body; else transport padding and CRLF open a part."""
        buffer = self._buffer
        if len(buffer) < 2:  # noqa: PLR2004  "--" or CRLF: two bytes decide
            return False
        if buffer.startswith(b"--"):
            self._state = _EPILOGUE
            buffer.clear()
            return False
        line_end = buffer.find(b"\r\n")
        if line_end < 0:
            if len(buffer) > MAX_HEADER_BYTES:
                msg = "malformed delimiter line"
                raise MultipartError(msg)
            return False
        if buffer[:line_end].strip(b" \t"):
            msg = "malformed delimiter line"
            raise MultipartError(msg)
        del buffer[: line_end + 2]
        self._state = _HEADERS
        return True

    def _consume(self, count: int) -> None:
        """Hash the first ``count`` bytes of the buffer as part data, and drop them."""
        if count <= 0:
            return
        with memoryview(self._buffer) as view, view[:count] as data:
            self._hash.update(data)
        self._size += count
        del self._buffer[:count]
