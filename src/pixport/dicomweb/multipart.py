"""Streaming multipart/related: STOW-RS bodies in, WADO-RS bodies out.

Incoming parts are written to staging files as they arrive, so a request of any size needs
only a chunk of memory.  The byte-level parsing is python-multipart's.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message

from python_multipart.multipart import MultipartParser

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


def parse_accept(header: str | None) -> list[MediaType]:
    """The media ranges of an Accept header, best first (stable for equal q)."""
    if not header:
        return [MediaType("*/*")]
    ranges = [parse_media_type(part) for part in _split_accept(header) if part.strip()]
    return sorted(ranges, key=lambda m: -m.q)


def _split_accept(header: str) -> list[str]:
    # Commas inside quoted parameters (type="application/dicom,...") are not separators.
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in header:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


class StowReceiver:
    """Feeds a multipart/related body to staging files, one per application/dicom part."""

    def __init__(self, boundary: str, new_staging_file: Callable[[], StagingFile]) -> None:
        self.items: list[StagedFile | InstanceResult] = []
        self._new_staging_file = new_staging_file
        self._current: StagingFile | None = None
        self._skip = False
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[str, str] = {}
        self.parts = 0
        self._handed_over = 0
        self._parser = MultipartParser(
            boundary.encode("latin-1"),
            callbacks={
                "on_part_begin": self._part_begin,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_header_field": self._header_field_data,
                "on_header_value": self._header_value_data,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
            },
        )

    def write(self, chunk: bytes) -> None:
        """Feed the next chunk of the body."""
        self._parser.write(chunk)

    def take_new(self) -> list[tuple[int, StagedFile | InstanceResult]]:
        """Items completed since the last call, with their positions, to start work on early."""
        new = list(enumerate(self.items))[self._handed_over :]
        self._handed_over = len(self.items)
        return new

    def finish(self) -> None:
        """The body has ended; a part still open means it was cut short."""
        self._parser.finalize()
        if self._current is not None:
            self._current.abort()
            self._current = None
            self.items.append(InstanceResult("rejected", reason="part was cut short"))

    def abort(self) -> None:
        """Delete everything staged (client went away, request refused)."""
        if self._current is not None:
            self._current.abort()
            self._current = None
        for item in self.items:
            if isinstance(item, StagedFile):
                item.path.unlink(missing_ok=True)
        self.items.clear()

    def _part_begin(self) -> None:
        self._headers = {}
        self._skip = False
        self.parts += 1

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        name = self._header_field.decode("latin-1").strip().lower()
        self._headers[name] = self._header_value.decode("latin-1").strip()
        self._header_field = b""
        self._header_value = b""

    def _headers_finished(self) -> None:
        media = parse_media_type(self._headers.get("content-type", DICOM))
        if media.type != DICOM:
            self._skip = True
            self.items.append(InstanceResult("rejected", reason=f"part of type {media.type} is not application/dicom"))
            return
        self._current = self._new_staging_file()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._skip or self._current is None:
            return
        try:
            self._current.write(data[start:end])
        except LimitExceeded as exc:
            self._current.abort()
            self._current = None
            self._skip = True
            self.items.append(InstanceResult("rejected", reason=exc.reason, failure_code=OUT_OF_RESOURCES))

    def _part_end(self) -> None:
        if self._current is not None:
            self.items.append(self._current.finish())
            self._current = None


def new_boundary() -> str:
    """A boundary that cannot occur in the parts by chance."""
    return f"pixport-{uuid.uuid4().hex}"


def part_header(boundary: str, content_type: str, extra: str = "") -> bytes:
    """The delimiter and headers that open one part."""
    return f"--{boundary}\r\nContent-Type: {content_type}\r\n{extra}\r\n".encode("latin-1")


def closing(boundary: str) -> bytes:
    """The close delimiter."""
    return f"--{boundary}--\r\n".encode("latin-1")
