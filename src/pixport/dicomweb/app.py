"""The DICOMweb application: routes, and the one place errors become HTTP statuses."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from pixport.archive.node import Archive
from pixport.config import Settings, load_settings
from pixport.dicomweb import qido, rendered, stow, wado
from pixport.dicomweb.responses import problem
from pixport.errors import (
    BadQuery,
    NotAuthenticated,
    NotFound,
    OutOfResources,
    PixelDataError,
    PixportError,
    StorageUnavailable,
)

log = structlog.get_logger("pixport.http")

STUDY = "/studies/{study}"
SERIES = STUDY + "/series/{series}"
INSTANCE = SERIES + "/instances/{instance}"


def _routes() -> list[Route]:
    return [
        Route("/studies", stow.store_instances, methods=["POST"]),
        Route(STUDY, stow.store_instances, methods=["POST"]),
        Route("/studies", qido.search_for_studies),
        Route("/series", qido.search_for_series),
        Route("/instances", qido.search_for_instances),
        Route(STUDY + "/series", qido.search_for_series),
        Route(STUDY + "/instances", qido.search_for_instances),
        Route(SERIES + "/instances", qido.search_for_instances),
        Route(STUDY, wado.retrieve),
        Route(SERIES, wado.retrieve),
        Route(INSTANCE, wado.retrieve),
        Route(STUDY + "/metadata", wado.retrieve_metadata),
        Route(SERIES + "/metadata", wado.retrieve_metadata),
        Route(INSTANCE + "/metadata", wado.retrieve_metadata),
        Route(INSTANCE + "/frames/{frames}", wado.retrieve_frames),
        Route(INSTANCE + "/bulkdata/{tag}/{occurrence}", wado.retrieve_bulkdata),
        Route(STUDY + "/rendered", rendered.retrieve_rendered),
        Route(SERIES + "/rendered", rendered.retrieve_rendered),
        Route(INSTANCE + "/rendered", rendered.retrieve_rendered),
        Route(INSTANCE + "/frames/{frames}/rendered", rendered.retrieve_rendered),
        Route(STUDY + "/thumbnail", rendered.retrieve_thumbnail),
        Route(SERIES + "/thumbnail", rendered.retrieve_thumbnail),
        Route(INSTANCE + "/thumbnail", rendered.retrieve_thumbnail),
    ]


async def healthz(request: Request) -> Response:
    """Liveness and readiness: the index answers."""
    archive: Archive = request.app.state.archive
    from starlette.concurrency import run_in_threadpool  # noqa: PLC0415

    await run_in_threadpool(archive.index.count_instances)
    return JSONResponse({"status": "ok"})


def _handler(status: int) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def handle(_request: Request, exc: Exception) -> Response:
        if status >= 500:  # noqa: PLR2004
            log.error("request.failed", error=type(exc).__name__, status=status)
        return problem(status, str(exc))

    return handle


class AccessLog:
    """Access log without query values: QIDO queries may hold patient names or IDs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_and_record(message: dict[str, object]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])  # type: ignore[call-overload]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)  # type: ignore[arg-type]
        finally:
            query = scope.get("query_string", b"").decode("latin-1")
            keys = sorted({pair.split("=", 1)[0] for pair in query.split("&") if pair})
            log.info(
                "request",
                method=scope["method"],
                path=scope["path"],
                query_keys=keys,
                status=status,
                ms=round((time.perf_counter() - started) * 1000, 1),
            )


def create_app(archive: Archive) -> Starlette:
    """The ASGI application serving ``archive`` under /dicomweb.

    On a gateway (``gateway.institution_code`` set) also: the hub-only routes
    (``gateway.access``), the hospital-internal publishing API (``gateway.publishing_api``)
    and, with ``gateway.auto_publish_after`` set, the automatic publisher
    (``gateway.auto_publish``) for as long as the server runs.
    """
    routes: list[Route | Mount] = [
        Route("/healthz", healthz),
        Mount("/dicomweb", routes=_routes()),
        Route("/wado", rendered.wado_uri),
    ]
    gateway = None
    lifespan = None
    if archive.settings.gateway.institution_code is not None:
        from pixport.gateway.access import hub_access_routes  # noqa: PLC0415  gateways only
        from pixport.gateway.node import Gateway  # noqa: PLC0415
        from pixport.gateway.publishing_api import publishing_routes  # noqa: PLC0415

        gateway = Gateway(archive.settings, archive)
        routes = [*hub_access_routes(_routes()), *publishing_routes(), *routes]
        quiet_seconds = archive.settings.gateway.auto_publish_after
        if quiet_seconds is not None:
            from pixport.gateway.auto_publish import auto_publish_lifespan  # noqa: PLC0415

            lifespan = auto_publish_lifespan(gateway, quiet_seconds)
    middleware = []
    hub_access_port = archive.settings.gateway.hub_access_port
    if gateway is not None and hub_access_port is not None:
        from pixport.gateway.listeners import SeparateListeners  # noqa: PLC0415

        middleware.append(Middleware(SeparateListeners, hub_access_port=hub_access_port))
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=middleware,
        exception_handlers={
            NotFound: _handler(404),
            BadQuery: _handler(400),
            wado.NotAcceptable: _handler(406),
            PixelDataError: _handler(422),
            OutOfResources: _handler(507),
            StorageUnavailable: _handler(503),
            NotAuthenticated: _handler(401),
            PixportError: _handler(500),
        },
    )
    app.state.archive = archive
    app.state.gateway = gateway
    app.state.public_url = archive.settings.http.public_url
    return app


def create_app_from_environment() -> ASGIApp:
    """Factory for server worker processes: settings from PIXPORT_* and PIXPORT_CONFIG."""
    from pixport.wiring import build_archive  # noqa: PLC0415

    settings: Settings = load_settings()
    return AccessLog(create_app(build_archive(settings)))
