"""Key/value log lines on stderr, for the server processes (DICOMweb and DIMSE listeners)."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(level: str) -> None:
    """Key/value log lines on stderr, at ``level`` (the ``log_level`` setting)."""
    logging.basicConfig(level=level.upper(), format="%(message)s")
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        # One write(2) per line: print() writes the line and its newline separately, and the
        # listener's worker processes share one stderr, so two lines could end up glued.
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        # A module's logger is built once, not on every call: a filtered-out debug line per
        # C-STORE otherwise costs a bound logger's construction (a few % of a listener's CPU).
        # Server processes configure logging once, at start.
        cache_logger_on_first_use=True,
    )
