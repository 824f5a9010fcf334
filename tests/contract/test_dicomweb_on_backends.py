"""The DICOMweb front end on each backend: the same requests, the same answers, byte-identical."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import httpx
import pydicom
import uvicorn

from pixport.archive.node import Archive
from pixport.dicomweb.app import create_app

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"
FILES = [
    CORPUS / "modality" / "ct" / "CT_small.dcm",
    CORPUS / "charset" / "korean_chrI2_iso2022-ir149.dcm",
    CORPUS / "modality" / "us" / "OBXXXX1A_rle_2frame.dcm",
]


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:
        """Signals belong to pytest."""


def test_stow_qido_wado_round_trip(archive: Archive) -> None:
    server = _Server(uvicorn.Config(create_app(archive), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    root = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/dicomweb"
    try:
        boundary = "contract-boundary"
        body = (
            b"".join(
                f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + f.read_bytes() + b"\r\n"
                for f in FILES
            )
            + f"--{boundary}--".encode()
        )
        content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
        stored = httpx.post(root + "/studies", content=body, headers={"Content-Type": content_type}, timeout=60)
        assert stored.status_code == 200, stored.text
        found = httpx.get(root + "/studies", params={"PatientName": "홍*"}).json()
        assert found[0]["00100010"]["Value"][0]["Phonetic"] == "홍^길동"
        for path in FILES:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            url = f"{root}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
            single = httpx.get(url, headers={"Accept": "application/dicom"})
            assert single.content == path.read_bytes()
            [metadata] = httpx.get(url + "/metadata").json()
            assert metadata["00080018"]["Value"] == [ds.SOPInstanceUID]
        rendered = httpx.get(url + "/frames/2/rendered")
        assert rendered.headers["content-type"] == "image/jpeg"
        assert pydicom.dcmread(io.BytesIO(single.content)).NumberOfFrames == 2
    finally:
        server.should_exit = True
        thread.join(10)
