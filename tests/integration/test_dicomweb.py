"""DICOMweb against a real server (uvicorn in a thread) with real clients (dicomweb-client, httpx)."""

from __future__ import annotations

import gzip
import io
import subprocess
import threading
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import uvicorn
from dicomweb_client.api import DICOMwebClient
from PIL import Image

from pixport import build_archive, load_settings
from pixport.archive.node import Archive
from pixport.dicomweb.app import AccessLog, create_app

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"
CT = CORPUS / "modality" / "ct" / "CT_small.dcm"
KOREAN_ISO2022 = CORPUS / "charset" / "korean_chrI2_iso2022-ir149.dcm"
KOREAN_UTF8 = CORPUS / "charset" / "korean_chrI2_utf8.dcm"
KOREAN_MULTI = CORPUS / "charset" / "korean_chrKoreanMulti_iso2022-ir149.dcm"
JPEG_LOSSLESS = CORPUS / "modality" / "ct" / "ct_GuillemVela_jpegll.dcm"
MULTIFRAME_RLE = CORPUS / "modality" / "us" / "OBXXXX1A_rle_2frame.dcm"
TRUNCATED = CORPUS / "malformed" / "MR_truncated.dcm"
NO_UIDS = CORPUS / "malformed" / "empty_values_Issue195.dcm"


class ThreadedServer(uvicorn.Server):
    """uvicorn in a background thread (as httpx's own test suite runs its server)."""

    def install_signal_handlers(self) -> None:
        """Signals belong to pytest."""

    def start_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not self.started:
            if time.monotonic() > deadline:
                msg = "server did not start"
                raise RuntimeError(msg)
            time.sleep(0.01)
        return thread


class Node:
    """A running archive: its URL, and the archive object for white-box checks."""

    def __init__(self, archive: Archive, url: str) -> None:
        self.archive = archive
        self.url = url
        self.dicomweb = url + "/dicomweb"

    def client(self) -> DICOMwebClient:
        return DICOMwebClient(self.dicomweb)


def start_node(tmp_path: Path, **settings: Any) -> Iterator[Node]:
    archive = build_archive(load_settings(storage={"data_dir": tmp_path / "node"}, **settings))
    app = create_app(archive)
    config = uvicorn.Config(AccessLog(app), host="127.0.0.1", port=0, log_level="warning")
    server = ThreadedServer(config)
    thread = server.start_in_thread()
    port = server.servers[0].sockets[0].getsockname()[1]
    # dicomweb-client sends a Host header without the port; a deployment sets http.public_url.
    app.state.public_url = f"http://127.0.0.1:{port}"
    try:
        yield Node(archive, f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        thread.join(10)
        archive.close()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    yield from start_node(tmp_path)


def multipart_body(files: list[bytes], boundary: str = "test-boundary-7d1") -> tuple[bytes, str]:
    parts = [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + f + b"\r\n" for f in files]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def split_multipart(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """Parts of a multipart/related response: (headers, body)."""
    content_type = response.headers["content-type"]
    boundary = content_type.split("boundary=")[1].split(";")[0].strip().strip('"')
    delimiter = b"--" + boundary.encode()
    chunks = response.content.split(b"\r\n" + delimiter)
    chunks[0] = chunks[0].removeprefix(delimiter)
    parts = []
    for chunk in chunks:
        if chunk.startswith(b"--"):
            break
        head, _, body = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, body))
    return parts


def stow(node: Node, files: list[Path | bytes], study: str | None = None) -> httpx.Response:
    payloads = [f.read_bytes() if isinstance(f, Path) else f for f in files]
    body, content_type = multipart_body(payloads)
    url = node.dicomweb + "/studies" + (f"/{study}" if study else "")
    return httpx.post(url, content=body, headers={"Content-Type": content_type}, timeout=60)


def uids(path: Path) -> tuple[str, str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


# -- STOW-RS ---------------------------------------------------------------------------------


def test_stow_with_dicomweb_client_then_retrieve_byte_identical(node: Node) -> None:
    files = [CT, KOREAN_UTF8, JPEG_LOSSLESS, MULTIFRAME_RLE]
    result = node.client().store_instances([pydicom.dcmread(f) for f in files])
    assert len(result.ReferencedSOPSequence) == len(files)
    for path in files:
        study, series, sop = uids(path)
        response = httpx.get(
            f"{node.dicomweb}/studies/{study}/series/{series}/instances/{sop}",
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        )
        assert response.status_code == 200
        parts = split_multipart(response)
        assert len(parts) == 1
        # dicomweb-client re-encodes when it sends; what we return is exactly what we stored.
        stored = node.archive.index.list_instances(study, series, sop)[0]
        with node.archive.blobs.open(stored.digest) as blob:
            assert parts[0][1] == blob.read()


def test_stow_raw_bytes_are_kept_exactly(node: Node) -> None:
    original = KOREAN_ISO2022.read_bytes()
    assert stow(node, [original]).status_code == 200
    study, series, sop = uids(KOREAN_ISO2022)
    response = httpx.get(f"{node.dicomweb}/studies/{study}/series/{series}/instances/{sop}")
    assert split_multipart(response)[0][1] == original


def test_stored_with_remarks_is_warning_b007_never_b000(node: Node) -> None:
    """A non-conformant UID is stored as sent with a warning: B007, not B000 (no coercion)."""
    dataset = pydicom.dcmread(CT)
    dataset.SeriesInstanceUID = "1.2.03.4"  # a component with a leading zero
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    response = stow(node, [buffer.getvalue()])
    assert response.status_code == 200  # stored: no failure
    (item,) = response.json()["00081199"]["Value"]
    assert item["00081196"]["Value"] == [0xB007]
    assert "SeriesInstanceUID 1.2.03.4 is not a conformant UID" in item["00000902"]["Value"][0]


def test_stow_rejects_bad_parts_one_by_one_and_stores_the_rest(node: Node) -> None:
    response = stow(node, [CT, TRUNCATED, NO_UIDS, b"not dicom at all" * 20])
    assert response.status_code == 202
    body = response.json()
    assert len(body["00081199"]["Value"]) == 1
    failed = body["00081198"]["Value"]
    assert len(failed) == 3
    reasons = [item["00000902"]["Value"][0] for item in failed]
    assert any("truncated" in r for r in reasons)
    assert any("missing" in r for r in reasons)
    codes = {item["00081197"]["Value"][0] for item in failed}
    assert codes <= {0xC000, 0xA900}
    assert node.archive.index.count_instances() == 1


def test_duplicate_is_success_and_conflict_is_refused_and_listed(node: Node) -> None:
    assert stow(node, [CT]).status_code == 200
    again = stow(node, [CT])
    assert again.status_code == 200
    changed = pydicom.dcmread(CT)
    changed.PatientName = "Changed^Name"
    buffer = io.BytesIO()
    changed.save_as(buffer, enforce_file_format=True)
    conflict = stow(node, [buffer.getvalue()])
    assert conflict.status_code == 409
    item = conflict.json()["00081198"]["Value"][0]
    assert item["00081197"]["Value"] == [0x0111]
    assert "different content" in item["00000902"]["Value"][0]
    conflicts = node.archive.index.list_conflicts()
    assert [c.sop_instance_uid for c in conflicts] == [uids(CT)[2]]
    # The stored instance is still the first one, untouched.
    study, series, sop = uids(CT)
    response = httpx.get(f"{node.dicomweb}/studies/{study}/series/{series}/instances/{sop}")
    assert split_multipart(response)[0][1] == CT.read_bytes()


def test_stow_to_a_study_refuses_instances_of_other_studies(node: Node) -> None:
    study, _, _ = uids(CT)
    response = stow(node, [CT, KOREAN_UTF8], study=study)
    assert response.status_code == 202
    failed = response.json()["00081198"]["Value"]
    assert len(failed) == 1
    assert failed[0]["00081155"]["Value"] == [uids(KOREAN_UTF8)[2]]


@pytest.mark.parametrize(
    ("content_type", "body", "status"),
    [
        ("application/dicom", b"x", 415),
        ('multipart/related; type="image/jpeg"; boundary=b', b"x", 415),
        ('multipart/related; type="application/dicom"', b"x", 400),
        ('multipart/related; type="application/dicom"; boundary=b', b"", 400),
        ('multipart/related; type="application/dicom"; boundary=b', b"garbage without delimiters", 400),
    ],
)
def test_stow_bad_requests_get_4xx(node: Node, content_type: str, body: bytes, status: int) -> None:
    response = httpx.post(node.dicomweb + "/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == status
    assert node.archive.index.count_instances() == 0
    assert list(node.archive.blobs.staging_dir.iterdir()) == []


def test_request_and_object_limits(tmp_path: Path) -> None:
    for node in start_node(tmp_path, limits={"max_object_bytes": 20_000, "max_request_bytes": 100_000}):
        big = CORPUS / "modality" / "cr-dx" / "cr_Monochrome1-Jpeg.dcm"
        response = stow(node, [big])
        assert response.status_code == 413
        response = stow(node, [CT, KOREAN_UTF8])  # CT_small is 39 kB, over the 20 kB object limit
        assert response.status_code == 202
        failed = response.json()["00081198"]["Value"]
        assert failed[0]["00081197"]["Value"] == [0xA700]
        assert node.archive.index.count_instances() == 1
        assert list(node.archive.blobs.staging_dir.iterdir()) == []


# -- QIDO-RS ---------------------------------------------------------------------------------


@pytest.fixture
def loaded(node: Node) -> Node:
    files = [
        CT,
        KOREAN_ISO2022,
        KOREAN_MULTI,
        JPEG_LOSSLESS,
        MULTIFRAME_RLE,
        *sorted((CORPUS / "charset").glob("chr*.dcm")),
    ]
    response = stow(node, files)
    assert response.status_code in {200, 202}
    return node


def qido(node: Node, path: str, **params: str) -> list[dict[str, Any]]:
    response = httpx.get(node.dicomweb + path, params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    return response.json()


def test_qido_study_matching(loaded: Node) -> None:
    ct_study = uids(CT)[0]
    ds = pydicom.dcmread(CT, stop_before_pixels=True)
    assert [s["0020000D"]["Value"][0] for s in qido(loaded, "/studies", PatientID=ds.PatientID)] == [ct_study]
    assert qido(loaded, "/studies", PatientID=ds.PatientID[:3] + "*")
    assert qido(loaded, "/studies", PatientID="no-such-id") == []
    assert qido(loaded, "/studies", StudyInstanceUID=f"{ct_study},1.2.3.4")[0]["0020000D"]["Value"] == [ct_study]
    date = ds.StudyDate
    assert any(s["0020000D"]["Value"][0] == ct_study for s in qido(loaded, "/studies", StudyDate=f"{date}-{date}"))
    assert all(s["0020000D"]["Value"][0] != ct_study for s in qido(loaded, "/studies", StudyDate=f"{int(date) + 1}-"))
    studies = qido(loaded, "/studies", ModalitiesInStudy="CT")
    assert ct_study in {s["0020000D"]["Value"][0] for s in studies}
    assert all("CT" in s["00080061"]["Value"] for s in studies)


def test_qido_korean_names_in_all_three_groups(loaded: Node) -> None:
    for query in ("Hong*", "홍*", "洪*", "hong^gildong", "홍^길동"):
        found = qido(loaded, "/studies", PatientName=query)
        assert found, query
        names = [s["00100010"]["Value"][0] for s in found]
        assert {"Alphabetic": "Hong^Gildong", "Ideographic": "洪^吉洞", "Phonetic": "홍^길동"} in names
    fuzzy = qido(loaded, "/studies", PatientName="길동", fuzzymatching="true")
    assert fuzzy
    assert qido(loaded, "/studies", PatientName="홍길동", fuzzymatching="true")
    assert qido(loaded, "/studies", PatientName="김희중")  # ISO 2022 IR 149 with several escapes


def test_qido_percent_decoding(loaded: Node) -> None:
    response = httpx.get(loaded.dicomweb + "/studies?PatientName=%ED%99%8D%2A")  # 홍*
    assert response.status_code == 200
    assert response.json()


def test_qido_levels_counts_and_paging(loaded: Node) -> None:
    everything = qido(loaded, "/studies")
    assert len(everything) >= 5
    page = qido(loaded, "/studies", limit="2", offset="1")
    assert [s["0020000D"] for s in page] == [s["0020000D"] for s in everything[1:3]]
    study, series, sop = uids(MULTIFRAME_RLE)
    record = next(s for s in everything if s["0020000D"]["Value"][0] == study)
    assert record["00201206"]["Value"] == [1]
    assert record["00201208"]["Value"] == [1]
    assert record["00080061"]["Value"] == ["US"]
    assert record["00081190"]["Value"][0].endswith(f"/dicomweb/studies/{study}")
    series_list = qido(loaded, f"/studies/{study}/series")
    assert [s["0020000E"]["Value"][0] for s in series_list] == [series]
    assert series_list[0]["00201209"]["Value"] == [1]
    assert qido(loaded, "/series", Modality="US")[0]["0020000E"]["Value"] == [series]
    instances = qido(loaded, f"/studies/{study}/series/{series}/instances")
    assert instances[0]["00080018"]["Value"] == [sop]
    assert qido(loaded, "/instances", SOPInstanceUID=sop)[0]["0020000D"]["Value"] == [study]


def test_qido_includefield_and_unsupported_keys(loaded: Node) -> None:
    response = httpx.get(loaded.dicomweb + "/studies", params={"includefield": "00081030,StudyID", "Laterality": "L"})
    assert response.status_code == 200
    assert "Warning" in response.headers
    assert all("00081030" in s and "00200010" in s for s in response.json())


@pytest.mark.parametrize(
    "query",
    [
        "limit=abc",
        "offset=-1",
        "NoSuchKeyword=1",
        "StudyDate=2020x",
        "StudyDate=-",
        "fuzzymatching=maybe",
        "SeriesNumber=x",
    ],
)
def test_qido_bad_parameters_get_400(loaded: Node, query: str) -> None:
    path = "/series" if query.startswith("SeriesNumber") else "/studies"
    response = httpx.get(f"{loaded.dicomweb}{path}?{query}")
    assert response.status_code == 400


def test_json_is_gzipped_on_request_and_dicom_never(loaded: Node) -> None:
    response = httpx.get(loaded.dicomweb + "/studies", headers={"Accept-Encoding": "gzip"})
    assert response.headers.get("content-encoding") == "gzip"
    assert response.json()  # httpx decodes
    raw = httpx.get(loaded.dicomweb + "/studies", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in raw.headers
    study, _, _ = uids(CT)
    dicom = httpx.get(f"{loaded.dicomweb}/studies/{study}", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in dicom.headers
    assert gzip.compress(b"") != b""


# -- WADO-RS ---------------------------------------------------------------------------------


def test_metadata_has_bulk_data_uris_that_resolve(loaded: Node) -> None:
    study, series, sop = uids(CT)
    metadata = loaded.client().retrieve_study_metadata(study)
    assert len(metadata) == 1
    pixel = metadata[0]["7FE00010"]
    assert pixel["BulkDataURI"].startswith(loaded.dicomweb + f"/studies/{study}/series/{series}/instances/{sop}/")
    response = httpx.get(pixel["BulkDataURI"])
    assert response.status_code == 200
    value = split_multipart(response)[0][1]
    assert value == pydicom.dcmread(CT).PixelData
    assert metadata[0]["00100010"]["Value"][0]["Alphabetic"] == str(pydicom.dcmread(CT).PatientName)


def test_metadata_of_korean_instance_keeps_all_groups(loaded: Node) -> None:
    study, _, _ = uids(KOREAN_ISO2022)
    metadata = loaded.client().retrieve_study_metadata(study)
    assert metadata[0]["00100010"]["Value"][0] == {
        "Alphabetic": "Hong^Gildong",
        "Ideographic": "洪^吉洞",
        "Phonetic": "홍^길동",
    }


def test_retrieve_accept_variants(loaded: Node) -> None:
    study, series, sop = uids(JPEG_LOSSLESS)
    url = f"{loaded.dicomweb}/studies/{study}"
    original = JPEG_LOSSLESS.read_bytes()
    for accept in (
        'multipart/related; type="application/dicom"',
        'multipart/related; type="application/dicom"; transfer-syntax=*',
        'multipart/related; type="*/*"',
        "*/*",
    ):
        response = httpx.get(url, headers={"Accept": accept})
        assert response.status_code == 200, accept
        assert split_multipart(response)[0][1] == original
        # As stored, the length is announced before the body, and it is exact.
        assert int(response.headers["content-length"]) == len(response.content), accept
    explicit = httpx.get(
        url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'}
    )
    assert explicit.status_code == 200
    assert "content-length" not in explicit.headers  # transcoded as it goes: length unknown up front
    decoded = pydicom.dcmread(io.BytesIO(split_multipart(explicit)[0][1]))
    assert decoded.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert (decoded.pixel_array == pydicom.dcmread(JPEG_LOSSLESS).pixel_array).all()
    refused = httpx.get(
        url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.80'}
    )
    assert refused.status_code == 406
    assert httpx.get(url, headers={"Accept": "text/html"}).status_code == 406
    single = httpx.get(f"{url}/series/{series}/instances/{sop}", headers={"Accept": "application/dicom"})
    assert single.status_code == 200
    assert single.content == original


def test_retrieve_unknown_is_404(loaded: Node) -> None:
    assert httpx.get(loaded.dicomweb + "/studies/1.2.3.999").status_code == 404
    assert httpx.get(loaded.dicomweb + "/studies/1.2.3.999/metadata").status_code == 404


def test_frames_native_and_compressed(loaded: Node) -> None:
    study, series, sop = uids(MULTIFRAME_RLE)
    base = f"{loaded.dicomweb}/studies/{study}/series/{series}/instances/{sop}"
    source = pydicom.dcmread(MULTIFRAME_RLE)
    decoded = httpx.get(base + "/frames/2", headers={"Accept": 'multipart/related; type="application/octet-stream"'})
    assert decoded.status_code == 200
    frame = split_multipart(decoded)[0][1]
    assert frame == source.pixel_array[1].tobytes()
    as_stored = httpx.get(base + "/frames/1,2", headers={"Accept": 'multipart/related; type="image/dicom-rle"'})
    assert as_stored.status_code == 200
    parts = split_multipart(as_stored)
    assert len(parts) == 2
    assert parts[0][0]["content-type"].startswith("image/dicom-rle")
    assert httpx.get(base + "/frames/3").status_code == 404
    assert httpx.get(base + "/frames/0").status_code == 400
    # dicomweb-client asks for octet-stream with transfer-syntax=*: the frame as stored (RLE).
    client_frames = loaded.client().retrieve_instance_frames(study, series, sop, frame_numbers=[1])
    stored_frame = next(pydicom.encaps.generate_frames(source.PixelData, number_of_frames=2))
    assert client_frames[0] == stored_frame


def test_rendered_and_thumbnail(loaded: Node) -> None:
    study, series, sop = uids(CT)
    base = f"{loaded.dicomweb}/studies/{study}/series/{series}/instances/{sop}"
    jpeg = httpx.get(base + "/rendered")
    assert jpeg.status_code == 200
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jpeg.content)).size == (128, 128)
    png = httpx.get(
        base + "/rendered", headers={"Accept": "image/png"}, params={"window": "40,400", "viewport": "64,64"}
    )
    assert png.headers["content-type"] == "image/png"
    assert max(Image.open(io.BytesIO(png.content)).size) == 64
    windowed = httpx.get(base + "/rendered", params={"window": "-1000,10"}).content
    assert windowed != jpeg.content
    assert httpx.get(base + "/rendered", params={"window": "abc"}).status_code == 400
    for path in (f"/studies/{study}/thumbnail", f"/studies/{study}/series/{series}/thumbnail", "/thumbnail"):
        url = f"{loaded.dicomweb}{path}" if path != "/thumbnail" else base + path
        response = httpx.get(url)
        assert response.status_code == 200
        assert max(Image.open(io.BytesIO(response.content)).size) <= 128
    frames = f"{loaded.dicomweb}/studies/{uids(MULTIFRAME_RLE)[0]}/series/{uids(MULTIFRAME_RLE)[1]}"
    frames += f"/instances/{uids(MULTIFRAME_RLE)[2]}/frames/2/rendered"
    assert httpx.get(frames).status_code == 200


def test_wado_uri(loaded: Node) -> None:
    study, series, sop = uids(CT)
    params = {"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop}
    dicom = httpx.get(loaded.url + "/wado", params={**params, "contentType": "application/dicom"})
    assert dicom.status_code == 200
    assert dicom.content == CT.read_bytes()
    jpeg = httpx.get(loaded.url + "/wado", params=params)
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert httpx.get(loaded.url + "/wado", params={**params, "requestType": "X"}).status_code == 400
    assert httpx.get(loaded.url + "/wado", params={**params, "objectUID": "1.2.3"}).status_code == 404


def test_qido_includefield_beyond_the_indexed_attributes(loaded: Node) -> None:
    study, _, _ = uids(CT)
    ds = pydicom.dcmread(CT, stop_before_pixels=True)
    found = qido(loaded, "/studies", StudyInstanceUID=study, includefield="00180050,Manufacturer")
    assert found[0]["00180050"]["Value"] == [float(ds.SliceThickness)]
    assert found[0]["00080070"]["Value"] == [ds.Manufacturer]
    everything = qido(loaded, f"/studies/{study}/series", includefield="all")
    assert everything[0]["00080070"]["Value"] == [ds.Manufacturer]
    assert "7FE00010" not in everything[0]
    plain = qido(loaded, "/studies", StudyInstanceUID=study)
    assert "00080070" not in plain[0]


def test_retrieved_and_transcoded_instances_pass_dcmtk(loaded: Node, tmp_path: Path) -> None:
    """DCMTK, an independent implementation, reads what we serve: as stored and transcoded."""
    for path in (JPEG_LOSSLESS, MULTIFRAME_RLE, KOREAN_ISO2022):
        study, series, sop = uids(path)
        url = f"{loaded.dicomweb}/studies/{study}/series/{series}/instances/{sop}"
        for syntax in ("*", "1.2.840.10008.1.2.1"):
            accept = f'multipart/related; type="application/dicom"; transfer-syntax={syntax}'
            response = httpx.get(url, headers={"Accept": accept})
            assert response.status_code == 200
            target = tmp_path / f"{sop}-{syntax.replace('*', 'orig')}.dcm"
            target.write_bytes(split_multipart(response)[0][1])
            assert subprocess.run(
                ["dcmftest", str(target)], capture_output=True, text=True, check=False
            ).stdout.startswith("yes")
            dump = subprocess.run(
                ["dcmdump", "-q", "+E", str(target)], capture_output=True, encoding="latin-1", check=False
            )
            assert dump.returncode == 0, dump.stderr
            assert sop in dump.stdout
            if syntax != "*":
                assert "=LittleEndianExplicit" in dump.stdout


def test_bulk_data_uris_of_icon_image_and_pixel_data_are_distinct(node: Node) -> None:
    dataset = pydicom.dcmread(CT)
    icon = pydicom.Dataset()
    icon.Rows, icon.Columns = 64, 64
    icon.SamplesPerPixel, icon.BitsAllocated, icon.BitsStored, icon.HighBit = 1, 8, 8, 7
    icon.PhotometricInterpretation, icon.PixelRepresentation = "MONOCHROME2", 0
    icon.PixelData = bytes(range(256)) * 16
    dataset.IconImageSequence = [icon]
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    assert stow(node, [buffer.getvalue()]).status_code == 200
    study, series, sop = uids(CT)
    [metadata] = httpx.get(f"{node.dicomweb}/studies/{study}/series/{series}/instances/{sop}/metadata").json()
    icon_uri = metadata["00880200"]["Value"][0]["7FE00010"]["BulkDataURI"]
    pixel_uri = metadata["7FE00010"]["BulkDataURI"]
    assert icon_uri != pixel_uri
    assert split_multipart(httpx.get(icon_uri))[0][1] == icon.PixelData
    assert split_multipart(httpx.get(pixel_uri))[0][1] == dataset.PixelData


# chrSQEncoding is a bare data set (no SOP UIDs, no name): the contract tests cover its refusal.
NAMED_CHARSET_FILES = sorted(p for p in (CORPUS / "charset").glob("chr*.dcm") if p.name != "chrSQEncoding_utf8.dcm")


@pytest.mark.parametrize("path", NAMED_CHARSET_FILES, ids=lambda p: p.name)
def test_every_character_set_is_decoded_and_searchable(node: Node, path: Path) -> None:
    dataset = pydicom.dcmread(path, stop_before_pixels=True)
    dataset.decode()
    expected = [str(group) for group in dataset.PatientName.components]
    assert stow(node, [path]).status_code == 200
    study = uids(path)[0]
    [found] = qido(node, "/studies", StudyInstanceUID=study)
    name = found["00100010"]["Value"][0]
    assert [name.get(group, "") for group in ("Alphabetic", "Ideographic", "Phonetic")][: len(expected)] == expected
    # Searchable by the start of the first non-empty group, in any case.
    group = next(g for g in expected if g)
    query = group.split("^")[0][:2].lower() + "*"
    assert study in {s["0020000D"]["Value"][0] for s in qido(node, "/studies", PatientName=query)}


def test_names_match_whatever_the_unicode_normalization(loaded: Node) -> None:
    decomposed = unicodedata.normalize("NFD", "홍^길동")
    assert decomposed != "홍^길동"
    assert qido(loaded, "/studies", PatientName=decomposed)


def test_every_malformed_corpus_file_in_one_request_gets_an_answer_never_a_500(node: Node) -> None:
    files = sorted((CORPUS / "malformed").glob("*.dcm"))
    response = stow(node, files)
    assert response.status_code in {200, 202, 409}
    body = response.json()
    answered = len(body.get("00081199", {}).get("Value", [])) + len(body.get("00081198", {}).get("Value", []))
    assert answered == len(files)
    assert list(node.archive.blobs.staging_dir.iterdir()) == []
    assert httpx.get(node.url + "/healthz").status_code == 200
