"""Streaming multipart/related (RFC 2046 5.1): a body split into staging files as it arrives.

Used wherever DICOM objects come in a multipart/related body: STOW-RS requests
(``dicomweb.stow``) and the WADO-RS replies ``pixport verify`` reads
(``trust.image_sources``).  Each part is written to a staging file as it arrives, so a body
of any size needs only a chunk of memory.  No web framework is involved: the caller feeds the
chunks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message

from pixport.archive.ingest import OUT_OF_RESOURCES, InstanceResult
from pixport.archive.staging import StagedFile, StagingFile
from pixport.errors import LimitExceeded

DICOM = "application/dicom"


@dataclass(slots=True)
class MediaType:
    """A media type with its parameters (lower-cased names, unquoted values)."""

    type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0


def parse_media_type(text: str) -> MediaType:
    """Parse ``type/subtype; a=b; c="d"``."""
    message = Message()
    message["content-type"] = text
    pairs = message.get_params() or []
    params = {k.lower(): v for k, v in pairs[1:]}
    raw_type = text.split(";", 1)[0].strip().lower()
    q = 1.0
    if "q" in params:
        try:
            q = float(params.pop("q"))
        except ValueError:
            q = 0.0
    return MediaType(raw_type, {k: str(v) for k, v in params.items()}, q)


class MultipartError(ValueError):
    """The body is not well-formed multipart (RFC 2046 5.1)."""


MAX_HEADER_BYTES = 16 * 1024
PREAMBLE, HEADERS, DATA, EPILOGUE = range(4)


class StowReceiver:
    """Splits a multipart/related body into staging files, one per application/dicom part.

    Each chunk costs a few ``bytes.find`` calls and slices, and part data goes to its staging
    file as it arrives; only the tail that could hold the start of a split delimiter is kept
    back between chunks.  Written here rather than taken from python-multipart, which is as
    fast but refuses a preamble and transport padding (both allowed by RFC 2046) and does not
    tell a body that ended inside a part from one that was closed.
    """

    def __init__(self, boundary: str, new_staging_file: Callable[[], StagingFile]) -> None:
        self.items: list[StagedFile | InstanceResult] = []
        self.parts = 0
        self._new_staging_file = new_staging_file
        self._current: StagingFile | None = None
        self._skip = False
        self._handed_over = 0
        self._dash_boundary = b"--" + boundary.encode("latin-1")
        self._delimiter = b"\r\n" + self._dash_boundary
        self._buffer = bytearray()
        self._state = PREAMBLE

    def write(self, chunk: bytes) -> None:
        """Feed the next chunk of the body."""
        self._buffer += chunk
        while self._step():
            pass

    def _step(self) -> bool:
        """Consume what can be consumed; False when more input is needed."""
        buffer = self._buffer
        if self._state == PREAMBLE:
            at = buffer.find(self._dash_boundary)
            if at < 0:
                del buffer[: max(0, len(buffer) - len(self._dash_boundary))]
                return False
            return self._after_delimiter(at + len(self._dash_boundary))
        if self._state == HEADERS:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEADER_BYTES:
                    msg = "part headers too long"
                    raise MultipartError(msg)
                return False
            self._begin_part(bytes(buffer[:end]))
            del buffer[: end + 4]
            self._state = DATA
            return True
        if self._state == DATA:
            at = buffer.find(self._delimiter)
            if at < 0:
                keep = len(self._delimiter) - 1
                if len(buffer) > keep:
                    self._part_data(memoryview(buffer)[: len(buffer) - keep])
                    del buffer[: len(buffer) - keep]
                return False
            self._part_data(memoryview(buffer)[:at])
            self._end_part()
            return self._after_delimiter(at + len(self._delimiter))
        buffer.clear()  # epilogue: ignored
        return False

    def _after_delimiter(self, position: int) -> bool:
        """After a delimiter: ``--`` closes the body, else padding and CRLF open a part."""
        buffer = self._buffer
        line_end = buffer.find(b"\r\n", position)
        if buffer[position : position + 2] == b"--":
            self._state = EPILOGUE
            buffer.clear()
            return False
        if line_end < 0:
            if len(buffer) - position > MAX_HEADER_BYTES:
                msg = "malformed delimiter line"
                raise MultipartError(msg)
            del buffer[:position]
            buffer[:0] = self._dash_boundary  # re-scan from the delimiter when more arrives
            self._state = PREAMBLE
            return False
        if buffer[position:line_end].strip(b" \t"):
            msg = "malformed delimiter line"
            raise MultipartError(msg)
        del buffer[: line_end + 2]
        self._state = HEADERS
        return True

    def finish(self) -> None:
        """The body has ended: it must have been closed, and no part may be left open."""
        if self._state != EPILOGUE:
            if self._current is not None:
                self._current.abort()
                self._current = None
            if self._state == PREAMBLE and self.parts == 0:
                msg = "no multipart delimiter in the body"
                raise MultipartError(msg)
            self.items.append(InstanceResult("rejected", reason="part was cut short"))

    def take_new(self) -> list[tuple[int, StagedFile | InstanceResult]]:
        """Items completed since the last call, with their positions, to start work on early."""
        new = list(enumerate(self.items))[self._handed_over :]
        self._handed_over = len(self.items)
        return new

    def abort(self) -> None:
        """Delete everything staged (client went away, request refused)."""
        if self._current is not None:
            self._current.abort()
            self._current = None
        for item in self.items:
            if isinstance(item, StagedFile):
                item.path.unlink(missing_ok=True)
        self.items.clear()

    def _begin_part(self, raw_headers: bytes) -> None:
        self.parts += 1
        headers: dict[str, str] = {}
        for line in raw_headers.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip():
                headers[name.strip().lower()] = value.strip()
        media = parse_media_type(headers.get("content-type", DICOM))
        if media.type != DICOM:
            self._skip = True
            self.items.append(InstanceResult("rejected", reason=f"part of type {media.type} is not application/dicom"))
            return
        self._skip = False
        self._current = self._new_staging_file()

    def _part_data(self, data: memoryview) -> None:
        if self._skip or self._current is None or not data:
            return
        try:
            self._current.write(data)
        except LimitExceeded as exc:
            self._current.abort()
            self._current = None
            self._skip = True
            self.items.append(InstanceResult("rejected", reason=exc.reason, failure_code=OUT_OF_RESOURCES))

    def _end_part(self) -> None:
        if self._current is not None:
            self.items.append(self._current.finish())
            self._current = None
        self._skip = False
