"""Publishing by API: the hospital's own systems publish and withdraw studies at the hub.

Routes (mounted by ``dicomweb.app.create_app`` on a gateway, beside ``/dicomweb``):

- ``POST /gateway/publications`` with ``{"study_instance_uid": "..."}``: build the study's
  manifest, sign it with the institution's key and register it at the hub; 201 with the hub's
  registry entry (``manifest_id``, ``status``, ``supersedes``, ...).  A study published before
  is published again: the new manifest supersedes the previous one;
- ``GET /gateway/publications``: every study this gateway published, with its status;
- ``GET /gateway/publications/{study}``: one of them;
- ``POST /gateway/publications/{study}/withdraw`` with ``{"reason": "..."}``: withdraw the
  study's manifest at the hub (``POST /hub/manifests/{id}/withdraw``), then mark it withdrawn
  here; 200 with the hub's registry entry.  The reason goes to the hub's audit log: it must
  not name the patient.

These routes are **hospital-internal and unauthenticated**, like the archive's own
``/dicomweb`` (which stores and serves every study to whoever reaches it): the gateway's port
belongs on the hospital network.  The hub needs to reach only ``/hub-access/dicomweb``
(``gateway.access``, which demands the hub's signed assertion); where the hub reaches the
gateway through a reverse proxy or firewall, expose that prefix alone.

Errors are JSON problem documents (RFC 9457 members; ``status`` and ``detail`` as the hub's):
404 unknown or unpublished study, 409 patient not linked to a national key, publication
withdrawn already, or the hub's refusal of a conflicting manifest, 422 other refusals by the
hub (its status and reason in ``detail``), 502 hub unreachable or failing, 503 storage
unavailable.  Details carry UIDs and manifest ids, never patient data.  Signing, hashing the
study and the hub's HTTP calls run in the thread pool.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pixport.errors import NotFound, PeerUnavailable, PixportError, StorageUnavailable, TrustError
from pixport.gateway.hub_client import HubRefused
from pixport.gateway.node import Gateway, PatientNotLinked, PublicationWithdrawn

log = structlog.get_logger("pixport.gateway")

PREFIX = "/gateway/publications"
PROBLEM_JSON = "application/problem+json"
MAX_BODY_BYTES = 64 * 1024
MAX_REASON_CHARS = 300  # the hub keeps this much
UID = re.compile(r"[0-9]+(\.[0-9]+)*")  # DICOM UID characters (PS3.5 9.1), at most 64

Handler = Callable[[Request], Awaitable[Response]]


class BadRequest(PixportError):
    """The request body is not what the route takes."""


def problem(status: int, detail: str) -> Response:
    """One RFC 9457 problem document."""
    document = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status, "detail": detail}
    return JSONResponse(document, status_code=status, media_type=PROBLEM_JSON)


def status_of(exc: PixportError) -> int:
    """The HTTP status of an error met while publishing or withdrawing."""
    if isinstance(exc, BadRequest):
        return 400
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, PatientNotLinked | PublicationWithdrawn):
        return 409
    if isinstance(exc, HubRefused):
        if exc.status >= 500:  # noqa: PLR2004
            return 502
        return 409 if exc.status == 409 else 422  # noqa: PLR2004
    if isinstance(exc, PeerUnavailable):
        return 502
    if isinstance(exc, StorageUnavailable):
        return 503
    if isinstance(exc, TrustError):
        return 422
    return 500


def _problems(handler: Handler) -> Handler:
    async def handle(request: Request) -> Response:
        try:
            return await handler(request)
        except PixportError as exc:
            status = status_of(exc)
            if status >= 500:  # noqa: PLR2004
                # No traceback: the error is ours, and its message is in the response.
                log.error("publication.failed", error=type(exc).__name__, status=status, path=request.url.path)  # noqa: TRY400
            return problem(status, str(exc))

    return handle


async def _json_object(request: Request) -> dict[str, Any]:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise BadRequest(f"the body is larger than {MAX_BODY_BYTES} bytes")
    try:
        document = json.loads(body)
    except ValueError:
        raise BadRequest("the body is not JSON") from None
    if not isinstance(document, dict):
        raise BadRequest("the body must be a JSON object")
    return document


def _study_uid(value: object) -> str:
    if not isinstance(value, str) or len(value) > 64 or not UID.fullmatch(value):  # noqa: PLR2004
        raise BadRequest("study_instance_uid must be a DICOM UID (digits and dots, at most 64)")
    return value


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def publish_study(request: Request) -> Response:
    """Publish (or publish again, superseding) the study named in the body; 201."""
    document = await _json_object(request)
    study = _study_uid(document.get("study_instance_uid"))
    registered = await run_in_threadpool(_gateway(request).publish_study, study)
    return JSONResponse(registered, status_code=201, headers={"Location": f"{PREFIX}/{study}"})


async def list_publications(request: Request) -> Response:
    """Every study this gateway published, with its status."""
    found = await run_in_threadpool(_gateway(request).list_publications)
    return JSONResponse([p.as_json() for p in found])


async def get_publication(request: Request) -> Response:
    """One study's publication; 404 if this gateway never published it."""
    study = _study_uid(request.path_params["study"])
    publication = await run_in_threadpool(_gateway(request).get_publication, study)
    return JSONResponse(publication.as_json())


async def withdraw_study(request: Request) -> Response:
    """Withdraw the study's current manifest at the hub; the body gives the reason."""
    study = _study_uid(request.path_params["study"])
    document = await _json_object(request)
    reason = document.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise BadRequest('the body must give a reason: {"reason": "..."}')
    if len(reason) > MAX_REASON_CHARS:
        raise BadRequest(f"the reason is at most {MAX_REASON_CHARS} characters")
    withdrawn = await run_in_threadpool(_gateway(request).withdraw_study, study, reason.strip())
    return JSONResponse(withdrawn)


def publishing_routes() -> list[Route]:
    """The hospital-internal publishing routes."""
    return [
        Route(PREFIX, _problems(publish_study), methods=["POST"]),
        Route(PREFIX, _problems(list_publications), methods=["GET"]),
        Route(PREFIX + "/{study}", _problems(get_publication), methods=["GET"]),
        Route(PREFIX + "/{study}/withdraw", _problems(withdraw_study), methods=["POST"]),
    ]
