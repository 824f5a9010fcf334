"""Server log lines (pixport.logs)."""

from __future__ import annotations

import sys

import pytest
import structlog

from pixport.logs import configure_logging


class Recorder:
    """A stand-in for stderr that keeps each write call apart."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_each_line_is_one_write_so_processes_sharing_stderr_never_glue_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The DIMSE listener's workers write to one stderr: a line in two writes can interleave."""
    recorder = Recorder()
    monkeypatch.setattr(sys, "stderr", recorder)
    saved = structlog.get_config()
    try:
        configure_logging("info")
        structlog.get_logger("pixport.test").info("dimse.listening", port=104)
    finally:
        structlog.configure(**saved)
    assert len(recorder.writes) == 1
    assert recorder.writes[0].endswith("\n")
    assert "dimse.listening" in recorder.writes[0]
    assert "port=104" in recorder.writes[0]
