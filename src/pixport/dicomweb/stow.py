"""STOW-RS (PS3.18 10.5): store instances from a multipart/related body.

Each part is parsed as soon as it has arrived, in a worker thread, while the next parts are
still being received; the batch is committed (durable blobs, one index transaction) when the
body has ended, and only then is success reported.
"""

from __future__ import annotations

import asyncio
import contextlib
from queue import SimpleQueue

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from pixport.archive.ingest import WARNING_NOT_CONFORMANT, Examined, InstanceResult
from pixport.archive.multipart import DICOM, MultipartError, StowReceiver, parse_media_type
from pixport.archive.node import Archive
from pixport.archive.staging import StagedFile
from pixport.dicomweb.responses import base_url, dumps, json_response, problem
from pixport.errors import OutOfResources


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
    examiner = Examiner(archive, study_uid)
    try:
        failure = await _receive(request, receiver, examiner, limit)
    except BaseException:
        await _abandon(receiver, examiner)
        raise
    if failure is None and receiver.parts == 0:
        failure = problem(400, "no parts in the request body")
    if failure is not None:
        await _abandon(receiver, examiner)
        return failure
    done = await examiner.finish()
    examined = [
        item if isinstance(item, InstanceResult) else done[position] for position, item in enumerate(receiver.items)
    ]
    source = f"stow:{request.client.host if request.client else 'unknown'}"
    try:
        results = await run_in_threadpool(archive.ingest.commit, examined, source)
    except OutOfResources as exc:
        return problem(507, f"{exc}; nothing from this request was stored")
    return _response(request, results, study_uid)


class Examiner:
    """One worker thread per request that parses parts in arrival order while the body streams.

    One thread, not one task per part: handing each small part to the pool cost more than
    parsing it.
    """

    def __init__(self, archive: Archive, study_uid: str | None) -> None:
        self.archive = archive
        self.study_uid = study_uid
        self.queue: SimpleQueue[tuple[int, StagedFile] | None] = SimpleQueue()
        self.done: dict[int, Examined] = {}
        self.task: asyncio.Future[None] | None = None

    def submit(self, position: int, item: StagedFile) -> None:
        """Queue a part; start the thread on the first one."""
        if self.task is None:
            self.task = asyncio.ensure_future(run_in_threadpool(self._run))
        self.queue.put((position, item))

    def _run(self) -> None:
        while (work := self.queue.get()) is not None:
            position, item = work
            self.done[position] = self.archive.ingest.examine(item, self.study_uid)

    async def finish(self) -> dict[int, Examined]:
        """Wait until every queued part is parsed."""
        if self.task is not None:
            self.queue.put(None)
            await self.task
        return self.done


async def _receive(request: Request, receiver: StowReceiver, examiner: Examiner, limit: int) -> Response | None:
    """Stream the body into staging files, queueing each part for parsing as it completes."""

    def start_examining() -> None:
        for position, item in receiver.take_new():
            if isinstance(item, StagedFile):
                examiner.submit(position, item)

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
    except MultipartError:
        return problem(400, "body is not valid multipart/related")
    except OutOfResources as exc:
        return problem(507, str(exc))
    return None


async def _abandon(receiver: StowReceiver, examiner: Examiner) -> None:
    """Wait for parses in flight, then delete every staged file of the request."""
    with contextlib.suppress(Exception):
        await examiner.finish()
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
                item["00081196"] = {"vr": "US", "Value": [WARNING_NOT_CONFORMANT]}
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
