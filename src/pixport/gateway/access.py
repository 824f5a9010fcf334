"""The gateway's DICOMweb for the hub only: published studies, to a caller proven to be the hub.

Routes under ``/hub-access/dicomweb`` serve WADO-RS study retrieval and metadata with the
archive's own handlers, after two checks: the request carries an assertion signed with the
hub's pinned key, for this request, not replayed (``Gateway.authenticate_hub``); and the study
is published.  Anything else is 401 or 404, without saying whether the study exists.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pixport.errors import NotFound
from pixport.gateway.node import Gateway

PREFIX = "/hub-access/dicomweb"
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
        return await handler(request)

    return guarded


def hub_access_routes(retrieve: Handler, retrieve_metadata: Handler) -> list[Route]:
    """The hub-facing routes, wrapping the archive's WADO-RS handlers."""
    return [
        Route(PREFIX + "/studies/{study}", _for_the_hub(retrieve)),
        Route(PREFIX + "/studies/{study}/metadata", _for_the_hub(retrieve_metadata)),
    ]
