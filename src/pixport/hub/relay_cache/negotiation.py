"""Which study reads the relay cache may answer or fill: the request's ``Accept`` and ``Cache-Control``.

The cache holds a study exactly as the gateway stores it.  A request for the whole study in
another form (a transfer syntax to transcode to), or for its metadata, goes to the gateway.
``wants_as_stored`` picks the media range the gateway's own negotiation
(``dicomweb.wado.choose_instance_syntax``, for a study) would pick, and says whether it asks
for the stored bytes: ``multipart/related; type="application/dicom"`` without a
``transfer-syntax`` parameter, or with ``transfer-syntax=*``.  Both get the same answer from
the gateway, so either may be served from the other's entry.

``Cache-Control`` on the request (RFC 9111 5.2.1): ``no-cache`` reads from the gateway even
when the study is cached (and refreshes the entry); ``no-store`` does not keep what is read.
"""

from __future__ import annotations

import re

from pixport.archive.multipart import DICOM, parse_media_type

_ACCEPT_SEPARATOR = re.compile(r',(?=(?:[^"]*"[^"]*")*[^"]*$)')  # commas outside quoted strings
_MULTIPART_RANGES = frozenset({"multipart/related", "multipart/*", "*/*"})
_DICOM_PARTS = frozenset({DICOM, "application/*", "*/*"})


def wants_as_stored(accept: str | None) -> bool:
    """Whether a WADO-RS study request with this ``Accept`` gets the stored bytes."""
    if not accept or not accept.strip():
        return True
    ranges = sorted(
        (parse_media_type(text) for text in _ACCEPT_SEPARATOR.split(accept) if text.strip()), key=lambda m: -m.q
    )
    for media in ranges:
        if media.type in _MULTIPART_RANGES and media.params.get("type", DICOM).lower() in _DICOM_PARTS:
            return media.params.get("transfer-syntax", "*") == "*"
    return False


def cache_directives(cache_control: str | None) -> frozenset[str]:
    """The directive names of a ``Cache-Control`` header, lower-case (``no-cache``, ``no-store``...)."""
    if not cache_control:
        return frozenset()
    return frozenset(part.split("=", 1)[0].strip().lower() for part in cache_control.split(",") if part.strip())
