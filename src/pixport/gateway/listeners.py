"""A gateway's two faces: the hospital network's and the hub's, on separate listeners.

With ``gateway.hub_access_port`` set, the server listens twice (``dicomweb.server``): on
``http.port`` for the hospital (DICOMweb, the publishing API: unauthenticated, so on the
hospital network only) and on the hub-access port, which is the one exposed to the hub.
``SeparateListeners`` keeps them apart by the port a request arrived on: the hub's listener
serves ``/hub-access`` and nothing else, the hospital's everything but ``/hub-access``, so
opening the hub's port in a firewall opens nothing anonymous.  ``/healthz`` answers on both.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from pixport.gateway.access import PREFIX

HUB_ACCESS_ROOT = PREFIX.rsplit("/", 1)[0] + "/"  # "/hub-access/"
HEALTH = "/healthz"
NOT_HERE = b'{"status": 404, "detail": "not served on this listener"}'


class SeparateListeners:
    """ASGI middleware: each listener serves only its own paths."""

    def __init__(self, app: ASGIApp, *, hub_access_port: int) -> None:
        self.app = app
        self.hub_access_port = hub_access_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse, with a 404 that says no more, a path that belongs to the other listener."""
        if scope["type"] == "http" and scope["path"] != HEALTH:
            server = scope.get("server")
            on_hub_port = server is not None and server[1] == self.hub_access_port
            if on_hub_port != scope["path"].startswith(HUB_ACCESS_ROOT):
                await send(
                    {
                        "type": "http.response.start",
                        "status": 404,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(NOT_HERE))],
                    }
                )
                await send({"type": "http.response.body", "body": NOT_HERE})
                return
        await self.app(scope, receive, send)
