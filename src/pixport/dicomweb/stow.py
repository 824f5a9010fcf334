"""STOW-RS (PS3.18 10.5): store instances from a multipart/related body.

Each part is parsed as soon as it has arrived, in a worker thread, while the next parts are
still being received; the batch is committed (durable blobs, one index transaction) when the
body has ended, and only then is success reported.
"""

from __future__ import annotations

import asyncio

from python_multipart.exceptions import MultipartParseError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from pixport.archive.ingest import Examined, InstanceResult
from pixport.archive.node import Archive
from pixport.archive.staging import StagedFile
from pixport.dicomweb.multipart import DICOM, StowReceiver, parse_media_type
from pixport.dicomweb.responses import base_url, dumps, json_response, problem
from pixport.errors import OutOfResources

WARNING_COERCION = 0xB000


async def store_instances(request: Request) -> Response:
    """POST /studies and /studies/{study}."""
    archive: Archive = request.app.state.archive
    study_uid: str | None = request.path_params.get("study")
    media = parse_media_type(request.headers.get("content-type", ""))
    if media.type != "multipart/related":
        return problem(415, 'STOW-RS takes multipart/related; type="application/dicom"')
    if media.params.get("type", DICOM).lower() != DICOM:
        return problem(415, "only application/dicom parts are supported")
    boundary = media.params.get("boundary")
    if not boundary:
        return problem(400, "multipart/related without a boundary")
    limit = archive.settings.limits.max_request_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return problem(413, f"request is larger than {limit} bytes")
    receiver = StowReceiver(boundary, archive.ingest.new_staging_file)
    examining: dict[int, asyncio.Future[Examined]] = {}
    try:
        failure = await _receive(request, receiver, examining, study_uid, limit)
    except BaseException:
        await _abandon(receiver, examining)
        raise
    if failure is None and receiver.parts == 0:
        failure = problem(400, "no parts in the request body")
    if failure is not None:
        await _abandon(receiver, examining)
        return failure
    examined: list[Examined | InstanceResult] = []
    for position, item in enumerate(receiver.items):
        examined.append(await examining[position] if position in examining else item)  # type: ignore[arg-type]
    source = f"stow:{request.client.host if request.client else 'unknown'}"
    try:
        results = await run_in_threadpool(archive.ingest.commit, examined, source)
    except OutOfResources as exc:
        return problem(507, f"{exc}; nothing from this request was stored")
    return _response(request, results, study_uid)


async def _receive(
    request: Request,
    receiver: StowReceiver,
    examining: dict[int, asyncio.Future[Examined]],
    study_uid: str | None,
    limit: int,
) -> Response | None:
    """Stream the body into staging files, starting each part's parse as it completes."""
    archive: Archive = request.app.state.archive

    def start_examining() -> None:
        for position, item in receiver.take_new():
            if isinstance(item, StagedFile):
                examining[position] = asyncio.ensure_future(run_in_threadpool(archive.ingest.examine, item, study_uid))

    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                return problem(413, f"request is larger than {limit} bytes")
            receiver.write(chunk)
            start_examining()
        receiver.finish()
        start_examining()
    except ClientDisconnect:
        return problem(400, "client went away before the body ended")
    except MultipartParseError:
        return problem(400, "body is not valid multipart/related")
    except OutOfResources as exc:
        return problem(507, str(exc))
    return None


async def _abandon(receiver: StowReceiver, examining: dict[int, asyncio.Future[Examined]]) -> None:
    """Wait for parses in flight, then delete every staged file of the request."""
    if examining:
        await asyncio.gather(*examining.values(), return_exceptions=True)
    receiver.abort()


def _response(request: Request, results: list[InstanceResult], study_uid: str | None) -> Response:
    base = base_url(request)
    referenced, failed = [], []
    for result in results:
        item: dict[str, object] = {}
        if result.sop_class_uid:
            item["00081150"] = {"vr": "UI", "Value": [result.sop_class_uid]}
        if result.sop_instance_uid:
            item["00081155"] = {"vr": "UI", "Value": [result.sop_instance_uid]}
        if result.ok:
            item["00081190"] = {
                "vr": "UR",
                "Value": [
                    (
                        f"{base}/studies/{result.study_instance_uid}/series/{result.series_instance_uid}"
                        f"/instances/{result.sop_instance_uid}"
                    )
                ],
            }
            if result.warnings:
                item["00081196"] = {"vr": "US", "Value": [WARNING_COERCION]}
                item["00000902"] = {"vr": "LO", "Value": ["; ".join(result.warnings)[:1024]]}
            referenced.append(item)
        else:
            item["00081197"] = {"vr": "US", "Value": [result.failure_code or 0xC000]}
            item["00000902"] = {"vr": "LO", "Value": [(result.reason or "refused")[:1024]]}
            failed.append(item)
    body: dict[str, object] = {}
    studies = {r.study_instance_uid for r in results if r.ok}
    retrieve_study = study_uid or (studies.pop() if len(studies) == 1 else None)
    if retrieve_study:
        body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{retrieve_study}"]}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if not failed:
        status = 200
    elif referenced:
        status = 202
    else:
        status = 409
    return json_response(request, dumps(body), status_code=status)
