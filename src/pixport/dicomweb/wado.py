"""WADO-RS (PS3.18 10.4): instances, metadata, frames and bulk data.

Instances are streamed from the blob store part by part, in chunks; a study of any size needs
one chunk of memory.  Metadata comes from the DICOM JSON stored at ingest: no file is read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from pixport.archive.multipart import DICOM, MediaType
from pixport.archive.node import Archive
from pixport.dicom.metadata import with_base
from pixport.dicomweb.multipart import closing, new_boundary, parse_accept, part_header
from pixport.dicomweb.responses import base_url, json_response, problem
from pixport.errors import NotFound
from pixport.storage.base import StoredInstance

CHUNK = 1024 * 1024
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
NATIVE_SYNTAXES = frozenset({"1.2.840.10008.1.2", EXPLICIT_VR_LITTLE_ENDIAN, "1.2.840.10008.1.2.2"})
OCTET_STREAM = "application/octet-stream"
PIXEL_DATA = 0x7FE00010

# Transfer syntax -> media type of a frame in it (PS3.18 Table 8.7.3-2 and 8.7.3-5).
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}


class NotAcceptable(Exception):
    """No representation the client accepts can be produced."""


def _scope(request: Request) -> tuple[str, str | None, str | None]:
    params = request.path_params
    return params["study"], params.get("series"), params.get("instance")


async def _instances(request: Request) -> list[StoredInstance]:
    archive: Archive = request.app.state.archive
    study, series, instance = _scope(request)
    found = await run_in_threadpool(archive.index.list_instances, study, series, instance)
    if not found:
        msg = "no such study, series or instance"
        raise NotFound(msg)
    return found


def choose_instance_syntax(accept: Sequence[MediaType], *, single: bool) -> tuple[str, str | None]:
    """(container, transfer syntax or None for as stored) for a retrieve request.

    ``container`` is ``multipart`` or, for one instance asked for as application/dicom,
    ``single``.
    """
    for media in accept:
        if media.type in {"multipart/related", "*/*", "multipart/*"}:
            part_type = media.params.get("type", DICOM).lower()
            if part_type not in {DICOM, "*/*", "application/*"}:
                continue
            return "multipart", _syntax(media)
        if media.type == DICOM and single:
            return "single", _syntax(media)
    msg = 'acceptable: multipart/related; type="application/dicom"'
    raise NotAcceptable(msg)


def _syntax(media: MediaType) -> str | None:
    value = media.params.get("transfer-syntax")
    if value is None or value == "*":
        return None
    return value


async def retrieve(request: Request) -> Response:
    """GET /studies/{study}[/series/{series}[/instances/{instance}]]."""
    archive: Archive = request.app.state.archive
    accept = parse_accept(request.headers.get("accept"))
    _, _, instance = _scope(request)
    container, syntax = choose_instance_syntax(accept, single=instance is not None)
    found = await _instances(request)
    if (
        syntax is not None
        and syntax != EXPLICIT_VR_LITTLE_ENDIAN
        and any(i.transfer_syntax_uid != syntax for i in found)
    ):
        msg = f"cannot transcode to {syntax}; ask for transfer-syntax=* or {EXPLICIT_VR_LITTLE_ENDIAN}"
        raise NotAcceptable(msg)
    first: bytes | None = None
    if syntax is not None and syntax != found[0].transfer_syntax_uid:
        # Transcode the first instance before answering, so that an instance that cannot be
        # decoded gets a status code rather than a response cut short.
        first = await run_in_threadpool(_transcoded, archive, found[0].digest)
    as_stored = all(syntax in {None, i.transfer_syntax_uid} for i in found)
    if container == "single":
        body = _single(archive, found[0], syntax, first)
        media_type = f"{DICOM}; transfer-syntax={syntax or found[0].transfer_syntax_uid}"
        length = {"content-length": str(found[0].size)} if as_stored else None
        return StreamingResponse(body, media_type=media_type, headers=length)
    boundary = new_boundary()
    media_type = f'multipart/related; type="{DICOM}"; boundary={boundary}'
    if syntax is not None:
        media_type += f"; transfer-syntax={syntax}"
    # Sent as stored, the body's length is known before the first byte: a reader sees its
    # progress, and a relay (the hub) passes the body on without chunked framing.
    length = {"content-length": str(_multipart_length(found, syntax, boundary))} if as_stored else None
    return StreamingResponse(_multipart(archive, found, syntax, boundary, first), media_type=media_type, headers=length)


def _multipart_length(found: list[StoredInstance], syntax: str | None, boundary: str) -> int:
    """The exact length of ``_multipart``'s body when every instance goes as stored."""
    headers = sum(
        len(part_header(boundary, f"{DICOM}; transfer-syntax={syntax or i.transfer_syntax_uid}")) for i in found
    )
    return headers + sum(i.size + 2 for i in found) + len(closing(boundary))


async def _single(
    archive: Archive, item: StoredInstance, syntax: str | None, first: bytes | None
) -> AsyncIterator[bytes]:
    if first is not None:
        yield first
        return
    async for chunk in _instance_bytes(archive, item, syntax):
        yield chunk


async def _multipart(
    archive: Archive, found: list[StoredInstance], syntax: str | None, boundary: str, first: bytes | None
) -> AsyncIterator[bytes]:
    for position, item in enumerate(found):
        ts = syntax or item.transfer_syntax_uid
        yield part_header(boundary, f"{DICOM}; transfer-syntax={ts}")
        if position == 0 and first is not None:
            yield first
        else:
            async for chunk in _instance_bytes(archive, item, syntax):
                yield chunk
        yield b"\r\n"
    yield closing(boundary)


async def _instance_bytes(archive: Archive, item: StoredInstance, syntax: str | None) -> AsyncIterator[bytes]:
    if syntax is not None and syntax != item.transfer_syntax_uid:
        yield await run_in_threadpool(_transcoded, archive, item.digest)
        return
    # Opening may fetch the object (S3): off the event loop.  Reads are then local.
    stream = await run_in_threadpool(archive.blobs.open, item.digest)
    with stream:
        while chunk := stream.read(CHUNK):
            yield chunk


def _transcoded(archive: Archive, digest: str) -> bytes:
    from pixport.dicom.pixels import transcode_to_explicit_vr_little_endian  # noqa: PLC0415

    with archive.blobs.open(digest) as stream:
        return transcode_to_explicit_vr_little_endian(stream)


async def retrieve_metadata(request: Request) -> Response:
    """GET …/metadata: the DICOM JSON stored at ingest, with this node's BulkDataURIs."""
    archive: Archive = request.app.state.archive
    study, series, instance = _scope(request)
    documents = await run_in_threadpool(archive.index.list_metadata, study, series, instance)
    if not documents:
        msg = "no such study, series or instance"
        raise NotFound(msg)
    body = with_base(b"[" + b",".join(documents) + b"]", base_url(request))
    return json_response(request, body)


def parse_frame_list(text: str) -> list[int]:
    """``1,3,5`` to ``[1, 3, 5]``; raise ``ValueError`` for anything else."""
    numbers = [int(part) for part in text.split(",")]
    if not numbers or any(n < 1 for n in numbers):
        msg = "frame numbers start at 1"
        raise ValueError(msg)
    return numbers


def choose_frame_syntax(accept: Sequence[MediaType], stored_syntax: str) -> tuple[str, bool]:
    """(part media type, decode?) for a frames request."""
    stored_type = FRAME_MEDIA_TYPES.get(stored_syntax, OCTET_STREAM)
    for media in accept:
        if media.type not in {"multipart/related", "*/*", "multipart/*"}:
            continue
        part_type = media.params.get("type", OCTET_STREAM).lower()
        syntax = media.params.get("transfer-syntax")
        if part_type == OCTET_STREAM:
            if syntax in {"*", stored_syntax}:
                return OCTET_STREAM, False  # as stored, labelled with its transfer syntax
            if syntax in {None, EXPLICIT_VR_LITTLE_ENDIAN}:
                return OCTET_STREAM, stored_syntax != EXPLICIT_VR_LITTLE_ENDIAN
            continue
        if part_type in {"*/*", "image/*", "video/*"} or part_type == stored_type:
            return stored_type, False
    msg = f'acceptable: multipart/related; type="{OCTET_STREAM}" or type="{stored_type}"'
    raise NotAcceptable(msg)


async def retrieve_frames(request: Request) -> Response:
    """GET …/instances/{instance}/frames/{frames}."""
    archive: Archive = request.app.state.archive
    try:
        numbers = parse_frame_list(request.path_params["frames"])
    except ValueError:
        return problem(400, "frame list must be positive integers separated by commas")
    found = (await _instances(request))[0]
    part_type, decode = choose_frame_syntax(parse_accept(request.headers.get("accept")), found.transfer_syntax_uid)
    frames = await run_in_threadpool(_frames, archive, found.digest, numbers, decode)
    boundary = new_boundary()
    syntax = EXPLICIT_VR_LITTLE_ENDIAN if decode else found.transfer_syntax_uid
    part_content_type = f"{part_type}; transfer-syntax={syntax}"
    body = b"".join(part_header(boundary, part_content_type) + frame + b"\r\n" for frame in frames) + closing(boundary)
    return Response(body, media_type=f'multipart/related; type="{part_type}"; boundary={boundary}')


def _frames(archive: Archive, digest: str, numbers: list[int], decode: bool) -> list[bytes]:  # noqa: FBT001
    from pixport.dicom.pixels import decode_frames, read_frames  # noqa: PLC0415

    with archive.blobs.open(digest) as stream:
        return decode_frames(stream, numbers) if decode else read_frames(stream, numbers)


async def retrieve_bulkdata(request: Request) -> Response:
    """GET …/instances/{instance}/bulkdata/{tag}/{occurrence}: one bulk value, as octet-stream."""
    archive: Archive = request.app.state.archive
    found = (await _instances(request))[0]
    try:
        tag = int(request.path_params["tag"], 16)
        occurrence = int(request.path_params["occurrence"])
    except ValueError:
        return problem(400, "bulk data paths are …/bulkdata/{tag as 8 hex digits}/{occurrence}")
    threshold = archive.settings.limits.bulk_data_threshold
    value = await run_in_threadpool(_bulk_value, archive, found, tag, occurrence, threshold)
    boundary = new_boundary()
    body = part_header(boundary, OCTET_STREAM) + value + b"\r\n" + closing(boundary)
    return Response(body, media_type=f'multipart/related; type="{OCTET_STREAM}"; boundary={boundary}')


def _bulk_value(archive: Archive, found: StoredInstance, tag: int, occurrence: int, threshold: int) -> bytes:
    """The value that ``build_metadata`` numbered (tag, occurrence).

    Values count in depth-first order when they went out as BulkDataURIs: binary values over
    the threshold, and the top-level Pixel Data always.
    """
    import pydicom  # noqa: PLC0415

    with archive.blobs.open(found.digest) as stream:
        dataset = pydicom.dcmread(stream, force=True)
    top_level_pixels = dataset.get(PIXEL_DATA)
    bulk_size = (threshold // 4) * 3  # pydicom compares the raw length with 3/4 of the base64 threshold
    seen = 0
    for element in _walk(dataset):
        value = element.value  # type: ignore[attr-defined]
        if not isinstance(value, bytes | bytearray) or element.tag != tag:  # type: ignore[attr-defined]
            continue
        if len(value) > bulk_size or element is top_level_pixels:
            if seen == occurrence:
                return bytes(value)
            seen += 1
    msg = "no such bulk data"
    raise NotFound(msg)


def _walk(dataset: object) -> list[object]:
    """Elements depth first, in the order ``to_json_dict`` visits them."""
    out: list[object] = []
    for element in dataset:  # type: ignore[attr-defined]
        out.append(element)
        if element.VR == "SQ":
            for item in element.value:
                out.extend(_walk(item))
    return out
