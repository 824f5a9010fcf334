"""No patient name or ID reaches a log line, an error message or a file name."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pydicom
import pytest
from test_dicomweb import KOREAN_ISO2022, Node, start_node, stow

SECRET_NAME = "Secretname^Patientgiven"  # noqa: S105  a patient name, not a password
SECRET_ID = "RRN-800101-1234567"  # noqa: S105  a synthetic resident registration number


def _patient_file() -> bytes:
    dataset = pydicom.dcmread(KOREAN_ISO2022)
    dataset.PatientName = SECRET_NAME
    dataset.PatientID = SECRET_ID
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_logs_errors_and_paths_carry_no_patient_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    node: Node
    for node in start_node(tmp_path):
        original = _patient_file()
        assert stow(node, [original]).status_code == 200
        # A conflicting copy: its refusal reason must not quote the patient either.
        changed = pydicom.dcmread(io.BytesIO(original))
        changed.StudyDescription = "changed"
        buffer = io.BytesIO()
        changed.save_as(buffer, enforce_file_format=True)
        conflict = stow(node, [buffer.getvalue()])
        assert conflict.status_code == 409
        for params in ({"PatientName": SECRET_NAME}, {"PatientID": SECRET_ID}, {"PatientName": "Secret*"}):
            assert httpx.get(node.dicomweb + "/studies", params=params).json()
        bad = httpx.get(node.dicomweb + "/studies", params={"PatientBirthDate": SECRET_ID})
        assert bad.status_code == 400
        texts = [conflict.text, bad.text]
        stored_names = [str(p) for p in (tmp_path / "node").rglob("*")]
    captured = capsys.readouterr()
    everything = "\n".join([captured.out, captured.err, *texts, *stored_names])
    assert "request" in captured.out  # the access log did run
    for secret in (SECRET_NAME, "Secretname", "Secret", SECRET_ID, "800101"):
        assert secret not in everything
