"""multipart/related for the DICOMweb routes: Accept negotiation and WADO-RS bodies out.

Incoming bodies are split by ``archive.multipart`` (``StowReceiver``), which also holds the
media type parsing these use.
"""

from __future__ import annotations

import uuid

from pixport.archive.multipart import MediaType, parse_media_type


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


def new_boundary() -> str:
    """A boundary that cannot occur in the parts by chance."""
    return f"pixport-{uuid.uuid4().hex}"


def part_header(boundary: str, content_type: str, extra: str = "") -> bytes:
    """The delimiter and headers that open one part."""
    return f"--{boundary}\r\nContent-Type: {content_type}\r\n{extra}\r\n".encode("latin-1")


def closing(boundary: str) -> bytes:
    """The close delimiter."""
    return f"--{boundary}--\r\n".encode("latin-1")
