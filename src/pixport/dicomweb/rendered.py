"""Rendered resources and thumbnails (PS3.18 8.3.5, 9.5), and WADO-URI (PS3.18 9)."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from pixport.archive.multipart import DICOM
from pixport.archive.node import Archive
from pixport.dicomweb.multipart import parse_accept
from pixport.dicomweb.responses import problem
from pixport.dicomweb.wado import NotAcceptable, _transcoded
from pixport.errors import BadQuery, NotFound
from pixport.storage.base import StoredInstance

IMAGE_TYPES = ("image/jpeg", "image/png")
THUMBNAIL_SIZE = 128
MAX_VIEWPORT = 8192


def choose_image_type(accept_header: str | None) -> str:
    """image/jpeg (the default) or image/png."""
    for media in parse_accept(accept_header):
        if media.type in {"*/*", "image/*", "image/jpeg"}:
            return "image/jpeg"
        if media.type == "image/png":
            return "image/png"
    msg = "rendered resources are image/jpeg or image/png"
    raise NotAcceptable(msg)


def _window(text: str | None) -> tuple[float, float] | None:
    if not text:
        return None
    parts = text.split(",")
    try:
        center, width = float(parts[0]), float(parts[1])
    except (ValueError, IndexError) as exc:
        msg = "window is center,width[,function]"
        raise BadQuery(msg) from exc
    if width <= 0:
        msg = "window width must be positive"
        raise BadQuery(msg)
    return center, width


def _viewport(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        width, height = (int(p) for p in text.split(",")[:2])
    except ValueError as exc:
        msg = "viewport is width,height"
        raise BadQuery(msg) from exc
    if not (0 < width <= MAX_VIEWPORT and 0 < height <= MAX_VIEWPORT):
        msg = f"viewport must be between 1 and {MAX_VIEWPORT}"
        raise BadQuery(msg)
    return width, height


def _quality(text: str | None) -> int:
    if not text:
        return 90
    try:
        value = int(text)
    except ValueError as exc:
        msg = "quality is 1 to 100"
        raise BadQuery(msg) from exc
    if not 1 <= value <= 100:  # noqa: PLR2004
        msg = "quality is 1 to 100"
        raise BadQuery(msg)
    return value


def _pick(found: list[StoredInstance]) -> StoredInstance:
    """The representative instance of a study or series: the middle one of the first series."""
    first_series = [i for i in found if i.series_instance_uid == found[0].series_instance_uid]
    return first_series[len(first_series) // 2]


async def _found(request: Request) -> list[StoredInstance]:
    archive: Archive = request.app.state.archive
    params = request.path_params
    found = await run_in_threadpool(
        archive.index.list_instances, params["study"], params.get("series"), params.get("instance")
    )
    if not found:
        msg = "no such study, series or instance"
        raise NotFound(msg)
    return found


async def retrieve_rendered(request: Request) -> Response:
    """GET …/rendered at study, series, instance or frame level (a representative image)."""
    archive: Archive = request.app.state.archive
    media_type = choose_image_type(request.headers.get("accept"))
    q = request.query_params
    window, viewport, quality = _window(q.get("window")), _viewport(q.get("viewport")), _quality(q.get("quality"))
    frame = 1
    if "frames" in request.path_params:
        try:
            frame = int(request.path_params["frames"].split(",")[0])
        except ValueError:
            return problem(400, "frame numbers are positive integers")
        if frame < 1:
            return problem(400, "frame numbers start at 1")
    item = _pick(await _found(request))
    image = await run_in_threadpool(_render, archive, item.digest, frame, media_type, window, viewport, quality)
    return Response(image, media_type=media_type)


def _render(
    archive: Archive,
    digest: str,
    frame: int,
    media_type: str,
    window: tuple[float, float] | None,
    viewport: tuple[int, int] | None,
    quality: int,
) -> bytes:
    from pixport.dicom.pixels import render  # noqa: PLC0415

    with archive.blobs.open(digest) as stream:
        return render(stream, frame, media_type=media_type, window=window, viewport=viewport, quality=quality)


async def retrieve_thumbnail(request: Request) -> Response:
    """GET …/thumbnail at study, series or instance level."""
    archive: Archive = request.app.state.archive
    media_type = choose_image_type(request.headers.get("accept"))
    viewport = _viewport(request.query_params.get("viewport"))
    size = max(viewport) if viewport else THUMBNAIL_SIZE
    item = _pick(await _found(request))
    image = await run_in_threadpool(_thumbnail, archive, item.digest, size, media_type)
    return Response(image, media_type=media_type)


def _thumbnail(archive: Archive, digest: str, size: int, media_type: str) -> bytes:
    from pixport.dicom.pixels import thumbnail  # noqa: PLC0415

    with archive.blobs.open(digest) as stream:
        return thumbnail(stream, size, media_type=media_type)


async def wado_uri(request: Request) -> Response:
    """GET /wado?requestType=WADO&studyUID=…&seriesUID=…&objectUID=…[&contentType=…]."""
    archive: Archive = request.app.state.archive
    q = request.query_params
    if q.get("requestType") != "WADO":
        return problem(400, "requestType must be WADO")
    study, series, sop = q.get("studyUID"), q.get("seriesUID"), q.get("objectUID")
    if not (study and series and sop):
        return problem(400, "studyUID, seriesUID and objectUID are required")
    found = await run_in_threadpool(archive.index.list_instances, study, series, sop)
    if not found:
        return problem(404, "no such instance")
    item = found[0]
    content_types = [c.strip() for c in (q.get("contentType") or "image/jpeg").split(",")]
    if DICOM in content_types:
        syntax = q.get("transferSyntax")
        if syntax and syntax != item.transfer_syntax_uid:
            body = await run_in_threadpool(_transcoded, archive, item.digest)
        else:
            body = await run_in_threadpool(_read_all, archive, item.digest)
        return Response(body, media_type=DICOM)
    media_type = next((c for c in content_types if c in IMAGE_TYPES), None)
    if media_type is None:
        return problem(406, "contentType must be application/dicom, image/jpeg or image/png")
    frame = int(q.get("frameNumber") or 1)
    window = None
    if q.get("windowCenter") and q.get("windowWidth"):
        window = _window(f"{q.get('windowCenter')},{q.get('windowWidth')}")
    viewport = None
    if q.get("columns") or q.get("rows"):
        viewport = _viewport(f"{q.get('columns') or q.get('rows')},{q.get('rows') or q.get('columns')}")
    image = await run_in_threadpool(
        _render, archive, item.digest, frame, media_type, window, viewport, _quality(q.get("imageQuality"))
    )
    return Response(image, media_type=media_type)


def _read_all(archive: Archive, digest: str) -> bytes:
    with archive.blobs.open(digest) as stream:
        return stream.read()
