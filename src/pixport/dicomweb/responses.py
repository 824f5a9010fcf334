"""Response helpers shared by the DICOMweb routes."""

from __future__ import annotations

import gzip
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

DICOM_JSON = "application/dicom+json"
GZIP_MINIMUM = 1024


def base_url(request: Request) -> str:
    """The DICOMweb root as clients reach it: a relaying hub's, else ``http.public_url`` if set."""
    relayed: str | None = getattr(request.state, "dicomweb_base", None)
    if relayed:
        return relayed
    public: str | None = request.app.state.public_url
    if public:
        return public.rstrip("/") + "/dicomweb"
    return f"{request.url.scheme}://{request.url.netloc}/dicomweb"


def json_response(
    request: Request, body: bytes, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """DICOM JSON, gzip-compressed when the client accepts it and it is worth it.

    Only JSON is ever compressed: DICOM payloads are not (PS3.18 8.2.4).
    """
    out_headers = dict(headers or {})
    out_headers["Vary"] = "Accept-Encoding"
    accepts = request.headers.get("accept-encoding", "")
    if len(body) >= GZIP_MINIMUM and "gzip" in accepts.lower():
        body = gzip.compress(body, compresslevel=5)
        out_headers["Content-Encoding"] = "gzip"
    return Response(body, status_code=status_code, media_type=DICOM_JSON, headers=out_headers)


def dumps(document: Any) -> bytes:
    """Serialize JSON."""
    return orjson.dumps(document)


def warning_header(warnings: list[str]) -> dict[str, str]:
    """RFC 7234 Warning header for unsupported query keys and similar (PS3.18 8.3.4.2)."""
    if not warnings:
        return {}
    text = ", ".join(f'299 pixport "{w}"' for w in warnings)
    return {"Warning": text}


def problem(status_code: int, message: str) -> Response:
    """A short plain-text error body; messages never carry patient data."""
    return Response(message + "\n", status_code=status_code, media_type="text/plain")
