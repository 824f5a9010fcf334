"""The hub's HTTP API and DICOMweb: every route needs a node assertion (``trust.assertions``).

Routes (``caller`` is the authenticated institution, or ``operator``):

- ``GET /hub/directory``: the signed directory (``application/jose``), for offline checks;
- ``POST /hub/manifests``: register a signed manifest (body: the JWS); only its issuer may;
- ``GET /hub/manifests``: current manifests (``?study=``, ``?national_key=``); an institution
  sees its own, the operator all;
- ``GET /hub/manifests/{id}``: one manifest's JWS; ``POST /hub/manifests/{id}/withdraw``;
- ``POST /hub/manifests/{id}/verifications``: a receiver's verification outcome, audited
  (``pixport verify --report``); counts and flags only, never patient data;
- ``GET /hub/audit``: audit events (``?national_key=``), operator only;
- ``GET /dicomweb/studies``: QIDO-RS over the registry (studies the caller may read);
- ``GET /dicomweb/studies/{study}[/...]``: DICOMweb within one study (WADO-RS of the study,
  a series or an instance, metadata, frames, bulk data, rendered, thumbnails; QIDO-RS of its
  series and instances), streamed from the gateway that holds the study, never buffered
  whole; URIs in the answers name the hub; every read is audited.  The whole study as stored
  is served from the hub's relay cache when it holds the current manifest's study, verified
  (``hub.relay_cache``); ``Cache-Control: no-cache`` on the request reads from the gateway
  (and refreshes the cache).  ``PixPort-Source: cache|gateway`` says where the bytes came from.

Who may read a study here: the operator and the institution that published it (patients and
shares come later).  Errors are one JSON problem document each; reasons carry ids, never
patient data, and never the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import structlog
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive

from pixport.errors import (
    ManifestInvalid,
    NotAuthenticated,
    NotAuthorized,
    NotFound,
    PeerUnavailable,
    PixportError,
    StorageUnavailable,
    TrustError,
)
from pixport.hub.audit import StudyRead, VerificationPerformed
from pixport.hub.institutions import Actor
from pixport.hub.node import OPERATOR_SUBJECT, Hub
from pixport.hub.registry import RegisteredManifest
from pixport.hub.relay_cache import Admission, CacheFill, RelayCache, cache_directives, wants_as_stored
from pixport.relay_protocol import GATEWAY_DICOMWEB, RELAY_BASE_HEADER
from pixport.trust.assertions import authorization_header
from pixport.trust.directory import InstitutionEntry

log = structlog.get_logger("pixport.hub")
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
JOSE = "application/jose"
PASSED_ON = frozenset({200, 204, 206})  # answers relayed as they come
PASSED_HEADERS = frozenset({"content-type", "content-length", "content-encoding", "warning"})
CLIENT_ERRORS_PASSED_ON = 400
MAX_PROBLEM_BYTES = 64 * 1024
SOURCE_HEADER = "PixPort-Source"  # where a study's bytes came from: "cache" or "gateway"


async def _caller(request: Request) -> str:
    hub: Hub = request.app.state.hub
    caller = await run_in_threadpool(
        hub.authenticate, request.headers.get("authorization"), request.method, request.url.path
    )
    return caller.subject


def _actor(request: Request, caller: str) -> Actor:
    name = OPERATOR_SUBJECT if caller == OPERATOR_SUBJECT else f"institution:{caller}"
    return Actor(name, request.client.host if request.client else "")


async def get_directory(request: Request) -> Response:
    """The directory of institutions and keys, signed by the hub."""
    await _caller(request)
    hub: Hub = request.app.state.hub
    token = await run_in_threadpool(hub.institutions.signed_directory, hub.key)
    return Response(token, media_type=JOSE)


async def register_manifest(request: Request) -> Response:
    """Register the signed manifest in the body; 201 with its registry entry."""
    caller = await _caller(request)
    if caller == OPERATOR_SUBJECT:
        raise NotAuthorized("the operator does not publish studies")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_MANIFEST_BYTES:
            return _problem(413, f"a manifest is at most {MAX_MANIFEST_BYTES} bytes")
    try:
        token = body.decode("ascii").strip()
    except UnicodeDecodeError:
        return _problem(400, "the body is not a JWS compact serialization")
    hub: Hub = request.app.state.hub
    registered = await run_in_threadpool(
        lambda: hub.registry.register_manifest(token, caller=caller, actor=_actor(request, caller))
    )
    if registered.supersedes is not None:
        await _drop_from_relay_cache(hub, registered.supersedes)
    return JSONResponse(_public(registered), status_code=201)


async def list_manifests(request: Request) -> Response:
    """Current manifests the caller may see."""
    caller = await _caller(request)
    hub: Hub = request.app.state.hub
    found = await run_in_threadpool(
        lambda: hub.registry.list_manifests(
            national_key=request.query_params.get("national_key"),
            study_instance_uid=request.query_params.get("study"),
            institution_code=None if caller == OPERATOR_SUBJECT else caller,
        )
    )
    return JSONResponse([_public(m) for m in found])


async def get_manifest(request: Request) -> Response:
    """One manifest's signed JWS, for its issuer or the operator."""
    caller = await _caller(request)
    hub: Hub = request.app.state.hub
    manifest = await run_in_threadpool(hub.registry.get_manifest, request.path_params["manifest_id"])
    if caller not in {OPERATOR_SUBJECT, manifest.institution_code}:
        raise NotFound(f"no manifest {manifest.manifest_id}")
    return Response(manifest.token, media_type=JOSE, headers={"PixPort-Manifest-Status": manifest.status})


async def withdraw_manifest(request: Request) -> Response:
    """Withdraw one of the caller's current manifests (body: ``{"reason": ...}``)."""
    caller = await _caller(request)
    try:
        reason = str((await request.json()).get("reason", ""))[:300]
    except (ValueError, AttributeError):
        return _problem(400, 'the body must be a JSON object {"reason": "..."}')
    hub: Hub = request.app.state.hub
    withdrawn = await run_in_threadpool(
        lambda: hub.registry.withdraw_manifest(
            request.path_params["manifest_id"], caller=caller, reason=reason, actor=_actor(request, caller)
        )
    )
    await _drop_from_relay_cache(hub, withdrawn.manifest_id)
    return JSONResponse(_public(withdrawn))


async def _drop_from_relay_cache(hub: Hub, manifest_id: str) -> None:
    """A manifest that is no longer current: its study leaves the relay cache (it would never be served)."""
    if hub.relay_cache is not None:
        await run_in_threadpool(hub.relay_cache.discard, manifest_id)


VERIFICATION_COUNTS = frozenset(
    {"listed", "verified", "intact", "re-encoded", "altered", "missing", "extra", "unreadable", "ignored"}
)
"""What a verification report may count (``trust.verify.VerificationReport.counts``): numbers only."""
VERIFICATION_SHAPE = '{"verified": bool, "signer_valid": bool, "counts": {"intact": int, ...}}'


async def report_verification(request: Request) -> Response:
    """Record that the caller verified a manifest's images (body: ``{"verified": bool, ...}``); 201."""
    caller = await _caller(request)
    try:
        body = await request.json()
        verified, signer_valid, counts = _verification_body(body)
    except (ValueError, TypeError, AttributeError) as exc:
        return _problem(400, f"a verification report is {VERIFICATION_SHAPE}: {exc}")
    hub: Hub = request.app.state.hub
    manifest = await run_in_threadpool(hub.registry.get_manifest, request.path_params["manifest_id"])
    if not _may_read(caller, manifest):
        raise NotFound(f"no manifest {manifest.manifest_id} that this caller may read")
    actor = _actor(request, caller)
    event = VerificationPerformed(
        **actor.as_audit_fields(),
        # "refused": the receiver found the images not to be what the manifest says.
        outcome="success" if verified else "refused",
        national_key=manifest.national_key,
        object=manifest.manifest_id,
        purpose="verification before import",
        detail={"study_instance_uid": manifest.study_instance_uid, "signer_valid": signer_valid, **counts},
    )
    recorded = await run_in_threadpool(hub.audit.record, event)
    return JSONResponse({"recorded": recorded.seq, "manifest_id": manifest.manifest_id}, status_code=201)


def _verification_body(body: object) -> tuple[bool, bool, dict[str, int]]:
    if not isinstance(body, dict):
        raise TypeError("not a JSON object")
    verified, signer_valid, counts = body.get("verified"), body.get("signer_valid"), body.get("counts", {})
    if not isinstance(verified, bool) or not isinstance(signer_valid, bool):
        raise TypeError("verified and signer_valid must be true or false")
    if not isinstance(counts, dict) or not set(counts) <= VERIFICATION_COUNTS:
        raise ValueError(f"counts may only have {sorted(VERIFICATION_COUNTS)}")
    if not all(type(v) is int and 0 <= v < 2**31 for v in counts.values()):
        raise ValueError("counts must be non-negative integers")
    return verified, signer_valid, dict(counts)


def _may_read(caller: str, manifest: RegisteredManifest) -> bool:
    # Who may read a study (and so report on it): the operator and its publisher, until shares.
    return caller in {OPERATOR_SUBJECT, manifest.institution_code}


async def list_audit_events(request: Request) -> Response:
    """Audit events, optionally of one patient (national key); operator only."""
    caller = await _caller(request)
    if caller != OPERATOR_SUBJECT:
        raise NotAuthorized("only the operator reads the audit log")
    hub: Hub = request.app.state.hub
    events = await run_in_threadpool(
        lambda: hub.audit.list_events(
            national_key=request.query_params.get("national_key"),
            after_seq=int(request.query_params.get("after", "0") or 0),
        )
    )
    return JSONResponse([_event(e) for e in events])


async def search_for_studies(request: Request) -> Response:
    """QIDO-RS studies from the registry: the current manifests the caller may read."""
    caller = await _caller(request)
    hub: Hub = request.app.state.hub
    found = await run_in_threadpool(
        lambda: hub.registry.list_manifests(
            study_instance_uid=request.query_params.get("StudyInstanceUID"),
            institution_code=None if caller == OPERATOR_SUBJECT else caller,
        )
    )
    return Response(
        json.dumps([_study_json(m) for m in found]),
        media_type="application/dicom+json",
    )


async def retrieve_study(request: Request) -> Response:
    """DICOMweb within one study, streamed from the gateway that published it.

    WADO-RS (the study, a series or an instance; metadata; frames, bulk data, rendered,
    thumbnails) and QIDO-RS of the study's series and instances: the gateway answers with its
    archive's own handlers, URIs naming this hub (``PixPort-Relay-Base``).
    """
    caller = await _caller(request)
    hub: Hub = request.app.state.hub
    study = request.path_params["study"]
    visible = await run_in_threadpool(
        lambda: hub.registry.list_manifests(
            study_instance_uid=study, institution_code=None if caller == OPERATOR_SUBJECT else caller
        )
    )
    actor = _actor(request, caller)
    if not visible:
        await run_in_threadpool(_audit_read, hub, actor, None, study, "refused")
        raise NotFound(f"no study {study} that this caller may read")
    manifest = visible[0]
    suffix = request.url.path.split(f"/studies/{study}", 1)[1]
    cache = _relay_cache_for(request, hub.relay_cache, suffix)
    directives = cache_directives(request.headers.get("cache-control"))
    if cache is not None and "no-cache" not in directives:
        cached = await _from_relay_cache(hub, cache, actor, manifest)
        if cached is not None:
            return cached
    institution = await run_in_threadpool(hub.institutions.get_institution, manifest.institution_code)
    path = f"{GATEWAY_DICOMWEB}/studies/{study}{suffix}"
    query = f"?{request.url.query}" if request.url.query else ""
    headers = {
        "accept": request.headers.get("accept", "multipart/related; type=application/dicom"),
        # JSON may come gzipped, passed on as it came; DICOM is never compressed (PS3.18 8.2.4).
        "accept-encoding": request.headers.get("accept-encoding", "identity"),
        RELAY_BASE_HEADER: f"{request.url.scheme}://{request.url.netloc}/dicomweb",
        **authorization_header(hub.key, "hub", institution.code, "GET", path),
    }
    session: aiohttp.ClientSession = request.app.state.client
    try:
        upstream = await session.get(institution.endpoint + path + query, headers=headers)
    except (aiohttp.ClientError, TimeoutError) as exc:
        await run_in_threadpool(_audit_read, hub, actor, manifest, study, "error", "gateway")
        raise PeerUnavailable(f"gateway of {institution.code} is unreachable: {type(exc).__name__}") from None
    if upstream.status not in PASSED_ON:
        answer = await _gateway_refusal(upstream, institution.code)
        outcome = "error" if answer is None else "refused"
        await run_in_threadpool(_audit_read, hub, actor, manifest, study, outcome, "gateway")
        if answer is None:
            raise PeerUnavailable(f"gateway of {institution.code} answered {upstream.status}")
        return answer
    await run_in_threadpool(_audit_read, hub, actor, manifest, study, "success", "gateway")
    admission: Admission = request.app.state.admission
    keep = (
        cache is not None
        and "no-store" not in directives
        and ("no-cache" in directives or admission.worth_keeping(manifest.manifest_id))
    )

    async def body() -> AsyncIterator[bytes]:
        # Each piece as it arrived, neither waited for nor joined to the next: no copy here.
        complete = False
        try:
            async for chunk, _ in upstream.content.iter_chunks():
                if response.reader_gone:
                    return  # stop pulling the study from the gateway for nobody
                yield chunk
            complete = True
        finally:
            # A whole body leaves a reusable connection; a reader gone mid-study leaves one
            # with the rest of the study in flight, which is closed instead.
            if complete:
                upstream.release()
            else:
                upstream.close()
        if keep and cache is not None:
            # The copy is made afterwards, from a second read of the gateway that no reader
            # waits on: writing it while relaying cost the reader a third of its speed.
            _start_background_fill(request.app, cache, manifest, institution, path)

    passed = {k: v for k, v in upstream.headers.items() if k.lower() in PASSED_HEADERS}
    passed[SOURCE_HEADER] = "gateway"
    response = RelayedResponse(body(), status_code=upstream.status, headers=passed)
    return response


MAX_BACKGROUND_FILLS = 2
"""Studies fetched for the relay cache at once; others wait for their next read."""
FILL_PACE_BYTES = 16 * 1024 * 1024
"""A background fill waits while this much is handed to the cache's writer and not written."""


def _start_background_fill(
    app: Starlette, cache: RelayCache, manifest: RegisteredManifest, institution: InstitutionEntry, path: str
) -> None:
    """Fetch the study once more from its gateway, for the relay cache alone (at most one per manifest)."""
    fills: dict[str, asyncio.Task[None]] = app.state.background_fills
    if manifest.manifest_id in fills or len(fills) >= MAX_BACKGROUND_FILLS:
        return
    task = asyncio.get_running_loop().create_task(
        _fill_in_background(app.state.client, app.state.hub, cache, manifest, institution, path)
    )
    fills[manifest.manifest_id] = task
    task.add_done_callback(lambda _: fills.pop(manifest.manifest_id, None))


async def _fill_in_background(
    session: aiohttp.ClientSession,
    hub: Hub,
    cache: RelayCache,
    manifest: RegisteredManifest,
    institution: InstitutionEntry,
    path: str,
) -> None:
    """The study as stored, from the gateway into the relay cache, paced by the cache's writer."""
    headers = {
        "accept": 'multipart/related; type="application/dicom"; transfer-syntax=*',
        "accept-encoding": "identity",
        **authorization_header(hub.key, "hub", institution.code, "GET", path),
    }
    try:
        async with session.get(institution.endpoint + path, headers=headers) as upstream:
            fill = _cache_fill(cache, manifest, upstream)
            if fill is None:
                return
            complete = False
            try:
                async for chunk, _ in upstream.content.iter_chunks():
                    while cache.backlog() > FILL_PACE_BYTES:  # noqa: ASYNC110  the writer is a thread: polled
                        await asyncio.sleep(0.005)
                    fill.write(chunk)
                complete = True
            finally:
                if complete:
                    fill.finish()  # verified against the manifest, then kept, on the cache's threads
                else:
                    fill.abort()
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("relay_cache.fill_failed", manifest_id=manifest.manifest_id, error=type(exc).__name__)


class RelayedResponse(StreamingResponse):
    """A relayed body that knows when its reader has gone, so that the relay stops pulling it.

    Starlette cancels the body's iteration when the server reports the disconnect, but the
    cancellation can come late: once the reader is gone, uvicorn's ``send`` returns at once,
    and a body whose source is already buffered (the gateway's study, in the kernel's socket
    buffers) can run to its end first, pulling the whole study for nobody and looking
    complete.  ``reader_gone`` is set as soon as the disconnect is known; the relay checks it
    for every piece.
    """

    reader_gone = False

    async def listen_for_disconnect(self, receive: Receive) -> None:
        """Wait for the reader to go, and say so."""
        await super().listen_for_disconnect(receive)
        self.reader_gone = True


async def _from_relay_cache(hub: Hub, cache: RelayCache, actor: Actor, manifest: RegisteredManifest) -> Response | None:
    """The study from the relay cache, if it holds this manifest's; the read is audited like any other."""
    cached = await run_in_threadpool(cache.find, manifest.manifest_id)
    if cached is None:
        return None
    try:
        await run_in_threadpool(_audit_read, hub, actor, manifest, manifest.study_instance_uid, "success", "cache")
    except BaseException:
        cached.close()
        raise

    async def body() -> AsyncIterator[bytes]:
        async with contextlib.aclosing(cached.chunks()) as chunks:
            async for chunk in chunks:
                if response.reader_gone:
                    return  # stop reading the entry for nobody
                yield chunk

    headers = {"content-length": str(cached.length), SOURCE_HEADER: "cache"}
    response = RelayedResponse(body(), media_type=cached.content_type, headers=headers)
    return response


def _relay_cache_for(request: Request, cache: RelayCache | None, suffix: str) -> RelayCache | None:
    """The relay cache, if this request may be answered or filled from it: the whole study, as stored."""
    if cache is None or suffix or request.url.query or request.method != "GET":
        return None
    return cache if wants_as_stored(request.headers.get("accept")) else None


def _cache_fill(
    cache: RelayCache | None, manifest: RegisteredManifest, upstream: aiohttp.ClientResponse
) -> CacheFill | None:
    """A fill for the gateway's answer, if it is one to keep: the study as stored, its exact length announced."""
    length = upstream.headers.get("content-length", "")
    if cache is None or upstream.status != 200 or not length.isdigit() or "content-encoding" in upstream.headers:  # noqa: PLR2004
        return None
    return cache.begin(manifest, upstream.headers.get("content-type", ""), int(length))


async def _gateway_refusal(upstream: aiohttp.ClientResponse, code: str) -> Response | None:
    """The gateway's answer to a request it could not serve, passed on if it is about the request.

    404 (no such series or instance), 400 (a bad query), 406 (no acceptable representation)
    and the like describe the client's request and reach it as the gateway gave them (a short
    JSON problem).  401, 403 or any 5xx are the hub's or the gateway's fault: None (502).
    """
    try:
        if not CLIENT_ERRORS_PASSED_ON <= upstream.status < 500 or upstream.status in {401, 403}:  # noqa: PLR2004
            return None
        detail = (await upstream.content.read(MAX_PROBLEM_BYTES)).decode("utf-8", "replace")
    finally:
        upstream.release()
    try:
        text = str(json.loads(detail).get("detail", ""))
    except (ValueError, AttributeError):
        text = ""
    return _problem(upstream.status, text or f"gateway of {code} answered {upstream.status}")


def _audit_read(
    hub: Hub, actor: Actor, manifest: RegisteredManifest | None, study: str, outcome: str, source: str | None = None
) -> None:
    detail: dict[str, str | None] = {"manifest_id": manifest.manifest_id if manifest else None}
    if source is not None:
        detail["source"] = source
    hub.audit.record(
        StudyRead(
            **actor.as_audit_fields(),
            outcome=outcome,
            national_key=manifest.national_key if manifest else None,
            object=study,
            purpose="retrieve through the hub",
            detail=dict(detail),
        )
    )


def _study_json(m: RegisteredManifest) -> dict[str, object]:
    return {
        "0020000D": {"vr": "UI", "Value": [m.study_instance_uid]},
        "00080020": {"vr": "DA", "Value": [m.study_date]} if m.study_date else {"vr": "DA"},
        "00080061": {"vr": "CS", "Value": m.modalities} if m.modalities else {"vr": "CS"},
        "00201208": {"vr": "IS", "Value": [m.number_of_instances]},
    }


def _public(m: RegisteredManifest) -> dict[str, object]:
    return {
        "manifest_id": m.manifest_id,
        "institution": m.institution_code,
        "national_key": m.national_key,
        "study_instance_uid": m.study_instance_uid,
        "issued_at": m.issued_at,
        "registered_at": m.registered_at,
        "status": m.status,
        "supersedes": m.supersedes,
        "superseded_by": m.superseded_by,
        "number_of_instances": m.number_of_instances,
    }


def _event(e: object) -> dict[str, object]:
    from dataclasses import asdict  # noqa: PLC0415

    return asdict(e)  # type: ignore[call-overload, no-any-return]


def _problem(status: int, detail: str) -> Response:
    return JSONResponse({"status": status, "detail": detail}, status_code=status)


def _handler(status: int) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def handle(_request: Request, exc: Exception) -> Response:
        if status >= 500:  # noqa: PLR2004
            log.error("request.failed", error=type(exc).__name__, status=status)
        headers = {"WWW-Authenticate": "PixPort-Assertion"} if status == 401 else None  # noqa: PLR2004
        if status == 503:  # noqa: PLR2004  the database was busy or failed: nothing was done
            headers = {"Retry-After": "1"}
        response = _problem(status, str(exc))
        if headers:
            response.headers.update(headers)
        return response

    return handle


def create_hub_app(hub: Hub) -> Starlette:
    """The hub's ASGI application."""
    app = Starlette(
        routes=[
            Route("/hub/directory", get_directory),
            Route("/hub/manifests", register_manifest, methods=["POST"]),
            Route("/hub/manifests", list_manifests),
            Route("/hub/manifests/{manifest_id}", get_manifest),
            Route("/hub/manifests/{manifest_id}/withdraw", withdraw_manifest, methods=["POST"]),
            Route("/hub/manifests/{manifest_id}/verifications", report_verification, methods=["POST"]),
            Route("/hub/audit", list_audit_events),
            Route("/dicomweb/studies", search_for_studies),
            Route("/dicomweb/studies/{study}", retrieve_study),
            Route("/dicomweb/studies/{study}/{within:path}", retrieve_study),
        ],
        exception_handlers={
            NotAuthenticated: _handler(401),
            NotAuthorized: _handler(403),
            NotFound: _handler(404),
            ManifestInvalid: _handler(409),
            TrustError: _handler(422),
            PeerUnavailable: _handler(502),
            StorageUnavailable: _handler(503),
            PixportError: _handler(500),
        },
        lifespan=_lifespan,
    )
    app.state.hub = hub
    app.state.admission = Admission(hub.settings.relay_cache_keep_after)
    app.state.background_fills = {}
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    # One session for every relayed read: connections to gateways are kept and reused.  aiohttp,
    # not httpx, because its C parser relays a study at about twice the rate for half the CPU
    # (bench/hub_bench.py); bodies pass through undecoded, exactly as the gateway sent them.
    timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=60)
    hub: Hub = app.state.hub
    await run_in_threadpool(hub.open_relay_cache)
    try:
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
            app.state.client = session
            try:
                yield
            finally:
                fills: dict[str, asyncio.Task[None]] = app.state.background_fills
                for task in list(fills.values()):
                    task.cancel()  # its fill is aborted: nothing half-written stays
                await asyncio.gather(*fills.values(), return_exceptions=True)
    finally:
        await run_in_threadpool(hub.close_relay_cache)
