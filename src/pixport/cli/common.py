"""What every command group shares: settings from the global ``--config`` option, output."""

from __future__ import annotations

from pathlib import Path

import typer

from pixport.config import Settings, load_settings


def settings_from(ctx: typer.Context) -> Settings:
    """The settings, built once per invocation from ``--config`` and the environment."""
    root = ctx.find_root()
    if root.obj is None:
        config: Path | None = root.params.get("config")
        root.obj = load_settings(config)
    settings: Settings = root.obj
    return settings
