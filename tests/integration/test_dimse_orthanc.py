"""A real Orthanc drives PixPort's DIMSE listener: it stores into PixPort, queries it, moves from it,
and asks it for storage commitment (Orthanc as the requester), all through Orthanc's REST API.

PixPort knows Orthanc in ``dimse.remotes`` (as a C-MOVE destination and to send it the
storage-commitment report); Orthanc knows PixPort as the modality ``pixport``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from dimse_support import AE_TITLE, CORPUS, Listener, after_meta, free_port, start_listener, stored
from peers import LOOPBACK, Peer, orthanc, orthanc_bytes, orthanc_delete, orthanc_get, orthanc_post

HONG = ("Hong^Gildong", "洪^吉洞", "홍^길동")
FILES = [
    *sorted((CORPUS / "charset").glob("korean_chrI2_*.dcm")),
    CORPUS / "modality" / "ct" / "CT_small.dcm",
    CORPUS / "modality" / "ct" / "ct_GuillemVela_jpegll.dcm",
]


@dataclass
class Pair:
    """Orthanc and PixPort, each knowing the other, and what Orthanc holds: SOP Instance UID -> its ID."""

    orthanc: Peer
    pixport: Listener
    ids: dict[str, str]
    store_answer: object


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("orthanc-pixport")
    pixport_port = free_port()
    with orthanc(tmp, modalities={AE_TITLE: pixport_port}) as node:
        remotes = [{"ae_title": node.ae_title, "host": LOOPBACK, "port": node.port}]
        for listener in start_listener(tmp, port=pixport_port, remotes=remotes, allow_any_caller=False):
            ids = {}
            for path in FILES:
                answer = orthanc_post(node, "/instances", path.read_bytes())
                assert isinstance(answer, dict), answer
                assert answer["Status"] == "Success", (path.name, answer)
                ids[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = answer["ID"]
            # 1. Orthanc stores into PixPort (C-STORE SCU, one association).
            store_answer = orthanc_post(
                node, f"/modalities/{AE_TITLE.lower()}/store", {"Resources": list(ids.values()), "Synchronous": True}
            )
            yield Pair(node, listener, ids, store_answer)


def pixport_file(listener: Listener, sop_instance_uid: str) -> bytes:
    with listener.archive.blobs.open(stored(listener.archive, sop_instance_uid).digest) as blob:
        return bytes(blob.read())


def without_trailing_padding(data_set: bytes) -> bytes:
    """The data set without a final Data Set Trailing Padding (FFFC,FFFC) element.

    Orthanc keeps the padding in its file but, built on DCMTK, drops it when it sends (PS3.5 7.7
    allows it), so that element is the one part of the bytes Orthanc does not pass on.
    """
    at = data_set.rfind(b"\xfc\xff\xfc\xff")
    if at < 0:
        return data_set
    explicit = data_set[at + 4 : at + 6] == b"OB"
    header = 12 if explicit else 8
    length = int.from_bytes(data_set[at + header - 4 : at + header], "little")
    return data_set[:at] if at + header + length == len(data_set) else data_set


def test_orthanc_stores_into_pixport_byte_identical(pair: Pair) -> None:
    assert isinstance(pair.store_answer, dict), pair.store_answer
    assert pair.store_answer.get("InstancesCount") == len(pair.ids), pair.store_answer
    assert pair.store_answer.get("FailedInstancesCount", 0) == 0, pair.store_answer
    for uid, orthanc_id in pair.ids.items():
        kept_by_orthanc = after_meta(orthanc_bytes(pair.orthanc, f"/instances/{orthanc_id}/file"))
        assert after_meta(pixport_file(pair.pixport, uid)) == without_trailing_padding(kept_by_orthanc), uid
    korean = [p for p in FILES if p.name.startswith("korean_")]
    for path in korean:
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        name = pydicom.dcmread(pydicom.filebase.DicomBytesIO(pixport_file(pair.pixport, uid))).PatientName
        assert (name.alphabetic, name.ideographic, name.phonetic) == HONG, path.name


def study_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def query(pair: Pair, level: str, keys: dict[str, str]) -> list[dict[str, object]]:
    """Orthanc's C-FIND against PixPort; its answers, simplified to tag names."""
    answer = orthanc_post(pair.orthanc, f"/modalities/{AE_TITLE.lower()}/query", {"Level": level, "Query": keys})
    assert isinstance(answer, dict), answer
    count = orthanc_get(pair.orthanc, f"/queries/{answer['ID']}/answers")
    assert isinstance(count, list)
    contents = []
    for index in range(len(count)):
        content = orthanc_get(pair.orthanc, f"/queries/{answer['ID']}/answers/{index}/content?simplify")
        assert isinstance(content, dict)
        contents.append(content)
    return contents


def test_orthanc_queries_pixport_korean_names_whole(pair: Pair) -> None:
    answers = query(pair, "Study", {"PatientName": "홍*", "StudyInstanceUID": "", "PatientID": ""})
    korean_studies = {study_uid(p) for p in FILES if p.name.startswith("korean_")}
    assert {a["StudyInstanceUID"] for a in answers} == korean_studies, answers
    for answer in answers:
        assert answer["PatientName"] == "=".join(HONG), answer
    ct = pydicom.dcmread(FILES[-2], stop_before_pixels=True)
    answers = query(pair, "Study", {"PatientID": str(ct.PatientID), "StudyInstanceUID": "", "PatientName": ""})
    assert [a["StudyInstanceUID"] for a in answers] == [str(ct.StudyInstanceUID)], answers


def test_orthanc_moves_from_pixport(pair: Pair) -> None:
    """Orthanc forgets the Korean studies, then has PixPort move them back to itself (C-MOVE SCU)."""
    korean = [p for p in FILES if p.name.startswith("korean_")]
    wanted = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in korean}
    for uid in wanted:
        orthanc_delete(pair.orthanc, f"/instances/{pair.ids[uid]}")
    assert not set(orthanc_instances(pair.orthanc)) & {pair.ids[uid] for uid in wanted}
    answer = orthanc_post(
        pair.orthanc,
        f"/modalities/{AE_TITLE.lower()}/move",
        {
            "Level": "Study",
            "Resources": [{"StudyInstanceUID": uid} for uid in sorted({study_uid(p) for p in korean})],
            "TargetAet": pair.orthanc.ae_title,
            "Synchronous": True,
        },
    )
    assert set(orthanc_instances(pair.orthanc)) >= {pair.ids[uid] for uid in wanted}, answer
    for uid in wanted:  # what arrived is what PixPort holds
        moved = after_meta(orthanc_bytes(pair.orthanc, f"/instances/{pair.ids[uid]}/file"))
        assert moved == after_meta(pixport_file(pair.pixport, uid)), uid


def orthanc_instances(peer: Peer) -> list[str]:
    ids = orthanc_get(peer, "/instances")
    assert isinstance(ids, list)
    return [str(i) for i in ids]


def test_storage_commitment_with_orthanc_as_requester(pair: Pair) -> None:
    """Orthanc 1.10 sends the N-ACTION; PixPort reports on a new association to Orthanc (a known remote).

    Orthanc's answer is the transaction; its report at /storage-commitment/{id} is "Pending"
    until the N-EVENT-REPORT arrives, then "Success" or "Failure" (some instance failed).
    """
    references = [
        [str(d.SOPClassUID), str(d.SOPInstanceUID)]
        for d in (pydicom.dcmread(p, stop_before_pixels=True) for p in FILES)
    ]
    unknown = [references[0][0], "2.25.999999999999999999999"]

    def commit(instances: list[list[str]]) -> dict[str, object]:
        answer = orthanc_post(
            pair.orthanc,
            f"/modalities/{AE_TITLE.lower()}/storage-commitment",
            {"DicomInstances": instances, "Timeout": 30},
        )
        assert isinstance(answer, dict), answer
        deadline = time.monotonic() + 30
        while True:
            report = orthanc_get(pair.orthanc, str(answer["Path"]))
            assert isinstance(report, dict)
            if report.get("Status") != "Pending":
                return report
            assert time.monotonic() < deadline, f"no N-EVENT-REPORT reached Orthanc: {report}"
            time.sleep(0.1)

    def pairs(items: object) -> list[list[str]]:
        assert isinstance(items, list)
        return [[item["SOPClassUID"], item["SOPInstanceUID"]] for item in items]

    report = commit(references)
    assert report["Status"] == "Success", report
    assert report["RemoteAET"] == AE_TITLE
    assert pairs(report["Success"]) == references
    assert report["Failures"] == []

    report = commit([*references, unknown])
    assert report["Status"] == "Failure", report
    assert pairs(report["Success"]) == references
    assert pairs(report["Failures"]) == [unknown]
    assert [f["FailureReason"] for f in report["Failures"]] == [0x0112]  # No such object instance
