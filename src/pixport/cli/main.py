"""Entry point: ``pixport [--config FILE] GROUP COMMAND``; maps errors to exit codes once."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import structlog
import typer
from pydantic import ValidationError

from pixport.errors import ConfigurationError, PixportError, StorageUnavailable

EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_STORAGE = 3

app = typer.Typer(help="PixPort: medical image exchange.", no_args_is_help=True, pretty_exceptions_enable=False)


@app.callback()
def _root(
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML settings file (else PIXPORT_CONFIG).", exists=True)
    ] = None,
) -> None:
    """PixPort: medical image exchange."""
    del config  # read lazily by cli.common.settings_from


def _register() -> None:
    from pixport.cli.archive import archive_app  # noqa: PLC0415
    from pixport.cli.demo import demo  # noqa: PLC0415
    from pixport.cli.dimse import dimse_app  # noqa: PLC0415
    from pixport.cli.gateway import gateway_app  # noqa: PLC0415
    from pixport.cli.hub import hub_app  # noqa: PLC0415
    from pixport.cli.verify import verify  # noqa: PLC0415

    app.add_typer(archive_app, name="archive")
    app.add_typer(dimse_app, name="dimse")
    app.add_typer(hub_app, name="hub")
    app.add_typer(gateway_app, name="gateway")
    app.command("demo")(demo)
    app.command("verify")(verify)


def main() -> None:
    """Run the command; print a one-line error and exit non-zero on failure."""
    # Log lines go to stderr: stdout is for what a command reports (tables, --json).
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    _register()
    try:
        app()
    except ValidationError as exc:
        structlog.get_logger("pixport").error("settings.invalid", errors=exc.error_count())
        sys.stderr.write(f"pixport: invalid settings: {exc}\n")
        sys.exit(EXIT_CONFIG)
    except ConfigurationError as exc:
        sys.stderr.write(f"pixport: {exc}\n")
        sys.exit(EXIT_CONFIG)
    except StorageUnavailable as exc:
        sys.stderr.write(f"pixport: {exc}\n")
        sys.exit(EXIT_STORAGE)
    except PixportError as exc:
        sys.stderr.write(f"pixport: {exc}\n")
        sys.exit(EXIT_ERROR)
