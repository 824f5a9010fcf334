"""Run the DICOMweb server with uvicorn, in one process or several sharing the port."""

from __future__ import annotations

import logging
import os
import sys

import structlog
import uvicorn

from pixport.config import Settings


def configure_logging(level: str) -> None:
    """Key/value log lines on stderr."""
    logging.basicConfig(level=level.upper(), format="%(message)s")
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def run(settings: Settings) -> None:
    """Serve until interrupted.

    Several workers (``http.workers``, default one per core) are separate processes sharing
    the port, so CPU-bound parsing uses every core; each builds its archive from the same
    environment and config file.  The supervising process stays light: it creates the index
    schema (so workers never race to) and loads nothing else, no pydicom, no numpy.
    """
    configure_logging(settings.log_level)
    workers = settings.http.workers or os.cpu_count() or 1
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

        uvicorn.run(AccessLog(create_app(build_archive(settings))), **common)  # type: ignore[arg-type]
        return
    from pixport.wiring import build_index  # noqa: PLC0415

    build_index(settings).close()
    uvicorn.run(
        "pixport.dicomweb.app:create_app_from_environment",
        factory=True,
        workers=workers,
        **common,  # type: ignore[arg-type]
    )
