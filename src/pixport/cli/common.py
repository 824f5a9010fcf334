"""What every command group shares: settings from the global ``--config`` option, output."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pixport.config import Settings, load_settings


def settings_from(ctx: typer.Context) -> Settings:
    """The settings, built once per invocation from ``--config`` and the environment."""
    root = ctx.find_root()
    if root.obj is None:
        config: Path | None = root.params.get("config")
        root.obj = load_settings(config)
    settings: Settings = root.obj
    return settings


def progress_bar() -> Progress:
    """The progress bar every long command shows, on stderr (stdout is for its report)."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
