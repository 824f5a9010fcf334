"""Run the DICOMweb server with uvicorn, in one process or several sharing the port."""

from __future__ import annotations

import logging
import os

import structlog
import uvicorn

from pixport.config import Settings
from pixport.dicomweb.app import AccessLog, create_app
from pixport.wiring import build_archive


def configure_logging(level: str) -> None:
    """Key/value log lines on stderr."""
    logging.basicConfig(level=level.upper(), format="%(message)s")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())))


def run(settings: Settings) -> None:
    """Serve until interrupted.

    The archive is opened once here first, so the index schema exists before any worker starts.
    Several workers (``http.workers``) are separate processes: CPU-bound parsing then uses
    every core.  They rebuild their settings from the same environment and config file.
    """
    configure_logging(settings.log_level)
    workers = settings.http.workers or os.cpu_count() or 1
    archive = build_archive(settings)
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
        uvicorn.run(AccessLog(create_app(archive)), **common)  # type: ignore[arg-type]
        return
    archive.close()
    uvicorn.run(
        "pixport.dicomweb.app:create_app_from_environment",
        factory=True,
        workers=workers,
        **common,  # type: ignore[arg-type]
    )
