"""The multi-worker server re-creates its settings from the environment: nothing may be lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from pixport.config import Settings, load_settings
from pixport.dicomweb.server import settings_environment, worker_count


def test_settings_survive_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    original = load_settings(
        http={"port": 9123, "workers": 3, "public_url": "https://pacs.example.kr"},
        storage={"data_dir": tmp_path / "데이터", "backend": "embedded"},
        limits={"max_object_bytes": 12345678, "bulk_data_threshold": 64},
        log_level="warning",
    )
    monkeypatch.delenv("PIXPORT_CONFIG", raising=False)
    for name, value in settings_environment(original).items():
        monkeypatch.setenv(name, value)
    rebuilt = Settings()
    assert rebuilt.model_dump() == original.model_dump()


def test_zero_workers_means_one_per_core() -> None:
    assert worker_count(load_settings(http={"workers": 0})) >= 1
    assert worker_count(load_settings(http={"workers": 5})) == 5


def test_toml_file_and_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "pixport.toml"
    config.write_text(
        'log_level = "debug"\n'
        "[http]\nport = 9000\n"
        '[storage]\ndata_dir = "/srv/pixport"\n'
        "[limits]\nmax_sequence_depth = 8\n"
    )
    monkeypatch.setenv("PIXPORT_HTTP__PORT", "9001")  # the environment wins over the file
    settings = load_settings(config)
    assert settings.log_level == "debug"
    assert settings.http.port == 9001
    assert settings.storage.data_dir == Path("/srv/pixport")
    assert settings.limits.max_sequence_depth == 8


def test_unknown_settings_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "pixport.toml"
    config.write_text("[http]\nprot = 9000\n")
    with pytest.raises(ValueError, match="prot"):
        load_settings(config)
