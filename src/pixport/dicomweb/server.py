"""Run the DICOMweb server with uvicorn, in one process or several sharing the port.

``python -m pixport.dicomweb.server`` runs it with settings from the environment and
``PIXPORT_CONFIG``; ``pixport archive serve`` ends up here.
"""

from __future__ import annotations

import os
import socket
import sys

import uvicorn
from uvicorn.supervisors import Multiprocess

from pixport.config import Settings, load_settings
from pixport.errors import ConfigurationError
from pixport.logs import configure_logging


def worker_count(settings: Settings) -> int:
    """``http.workers``, where 0 means one per CPU core."""
    return settings.http.workers or os.cpu_count() or 1


def run(settings: Settings) -> None:
    """Serve until interrupted.

    Several workers are separate processes sharing the port, so CPU-bound parsing uses every
    core.  They are started from a fresh ``python -m pixport.dicomweb.server`` (this process is
    replaced, with the settings passed on in the environment): each worker then loads only the
    server, not the command line's libraries, and the supervisor loads neither pydicom nor
    numpy.  The supervisor creates the index schema first, so workers never race to.
    """
    if worker_count(settings) > 1 and os.environ.get("PIXPORT_SERVER_PROCESS") != "1":
        os.environ.update(settings_environment(settings))
        os.environ["PIXPORT_SERVER_PROCESS"] = "1"
        # glibc gives each thread that allocates its own arena; with a thread pool per worker
        # that inflates resident memory for no speed we can measure.  Read at process start.
        os.environ.setdefault("MALLOC_ARENA_MAX", "2")
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, "-m", "pixport.dicomweb.server"])  # noqa: S606
    _serve(settings)


def settings_environment(settings: Settings) -> dict[str, str]:
    """Environment variables that rebuild exactly these settings in another process."""
    document = settings.model_dump(mode="json")
    return {
        f"PIXPORT_{name.upper()}": value if isinstance(value, str) else _json(value) for name, value in document.items()
    }


def _json(value: object) -> str:
    import json  # noqa: PLC0415

    return json.dumps(value)


def _serve(settings: Settings) -> None:
    configure_logging(settings.log_level)
    workers = worker_count(settings)
    common = {
        "host": settings.http.host,
        "port": settings.http.port,
        "access_log": False,  # our AccessLog leaves query values out
        "log_level": settings.log_level,
        "loop": "uvloop",
        "http": "httptools",
        "timeout_keep_alive": 30,
    }
    if workers == 1:
        from pixport.dicomweb.app import AccessLog, create_app  # noqa: PLC0415
        from pixport.wiring import build_archive  # noqa: PLC0415

        app: object = AccessLog(create_app(build_archive(settings)))
        factory = False
    else:
        from pixport.wiring import build_index  # noqa: PLC0415

        build_index(settings).close()
        app, factory = "pixport.dicomweb.app:create_app_from_environment", True
    config = uvicorn.Config(app, factory=factory, workers=workers, **common)  # type: ignore[arg-type]
    # One socket per listener, bound here and shared by every worker: the hospital's, and the
    # hub's when gateway.hub_access_port is set (gateway.listeners keeps their paths apart).
    sockets = [config.bind_socket()]
    gateway = settings.gateway
    if gateway.institution_code is not None and gateway.hub_access_port is not None:
        sockets.append(_bind(gateway.hub_access_host or settings.http.host, gateway.hub_access_port))
    if workers == 1:
        uvicorn.Server(config).run(sockets=sockets)
    else:
        Multiprocess(config, sockets=sockets).run()


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket as uvicorn binds its own (inherited by the worker processes)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family=family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"cannot listen on {host}:{port} (gateway.hub_access_port): {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


if __name__ == "__main__":
    _serve(load_settings())
