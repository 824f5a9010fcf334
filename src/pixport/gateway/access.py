"""The gateway's DICOMweb for the hub only: published studies, to a caller proven to be the hub.

Under ``/hub-access/dicomweb`` the gateway serves every study-scoped read of the archive's
DICOMweb (WADO-RS study, series and instance retrieval, metadata, frames, bulk data, rendered
and thumbnails; QIDO-RS of a study's series and instances) with the archive's own handlers,
after two checks: the request carries an assertion signed with the hub's pinned key, for this
request, not replayed (``Gateway.authenticate_hub``); and the study is published.  Anything
else is 401 or 404, without saying whether the study exists.

URIs in answers (BulkDataURI, RetrieveURL) name the hub, which relays them, not this gateway:
the hub says its public DICOMweb root in ``PixPort-Relay-Base``.  Only the authenticated hub
can set it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pixport.errors import BadQuery, NotFound
from pixport.gateway.node import Gateway
from pixport.relay_protocol import GATEWAY_DICOMWEB, RELAY_BASE_HEADER

PREFIX = GATEWAY_DICOMWEB
STUDY_SCOPE = "/studies/{study}"
Handler = Callable[[Request], Awaitable[Response]]


def _for_the_hub(handler: Handler) -> Handler:
    async def guarded(request: Request) -> Response:
        gateway: Gateway = request.app.state.gateway
        await run_in_threadpool(
            gateway.authenticate_hub, request.headers.get("authorization"), request.method, request.url.path
        )
        study = request.path_params["study"]
        publication = await run_in_threadpool(gateway.find_publication, study)
        if publication is None or publication.status != "current":
            raise NotFound(f"no published study {study}")
        relay_base = request.headers.get(RELAY_BASE_HEADER)
        if relay_base is not None:
            if not relay_base.startswith(("http://", "https://")) or any(c in relay_base for c in '\r\n"<> '):
                raise BadQuery(f"{RELAY_BASE_HEADER} must be an http(s) URL")
            request.state.dicomweb_base = relay_base.rstrip("/")
        return await handler(request)

    return guarded


def hub_access_routes(dicomweb_routes: list[Route]) -> list[Route]:
    """The archive's study-scoped read routes (``dicomweb_routes``) under PREFIX, for the hub only."""
    return [
        Route(PREFIX + route.path, _for_the_hub(route.endpoint), methods=["GET"])
        for route in dicomweb_routes
        if route.path.startswith(STUDY_SCOPE) and route.methods is not None and "GET" in route.methods
    ]
