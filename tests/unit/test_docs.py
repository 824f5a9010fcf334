"""Every setting is documented (as datasette's test_docs does), and the README keeps its two commands."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

import pixport
from pixport.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def _setting_names(model: type[BaseModel], prefix: str = "") -> list[str]:
    names = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names.extend(_setting_names(annotation, f"{prefix}{name}."))
        else:
            names.append(prefix + name)
    return names


def test_every_setting_is_documented() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"^\| `([a-z0-9_.]+)` \|", text, flags=re.MULTILINE))
    assert documented == set(_setting_names(Settings))


def test_readme_names_the_two_commands_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "scripts/bootstrap && .venv/bin/pixport demo" in readme
    assert "\nscripts/test\n" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/bootstrap" in ci
    assert "scripts/test" in ci


def test_public_api_is_pinned() -> None:
    assert sorted(pixport.__all__) == [
        "Archive",
        "PixportError",
        "Settings",
        "__version__",
        "build_archive",
        "load_settings",
    ]
