"""DICOM JSON elements encoded directly against pydicom (``Dataset.from_json`` and its writer).

Every top-level element of every corpus file's stored DICOM JSON (as ingest builds it), plus
shapes the corpus lacks, must encode to pydicom's bytes: directly in Implicit and Explicit VR
Little Endian, and through pynetdicom's ``encode`` (which C-FIND uses) in every syntax the
query services accept.  The share of elements the direct path takes is pinned from below so
that the pydicom fallback cannot silently take over.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom.dsutils import encode

from pixport.dicom.fastwrite import UTF8_CHARSET, dataset_bytes, encode_element, to_dataset
from pixport.dicom.levels import INSTANCE_TAGS, SERIES_TAGS, STUDY_TAGS
from pixport.dicom.parse import ParseLimits, parse_instance
from pixport.errors import InstanceRejected

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"
CHARSET = {"00080005": {"vr": "CS", "Value": [UTF8_CHARSET]}}
# transfer syntax -> (implicit VR, little endian, deflated), as pynetdicom encodes for each
SYNTAXES = {
    "1.2.840.10008.1.2": (True, True, False),
    "1.2.840.10008.1.2.1": (False, True, False),
    "1.2.840.10008.1.2.2": (False, False, False),
    "1.2.840.10008.1.2.1.99": (False, True, True),
}
EDGE_CASES: list[dict[str, Any]] = [
    {
        "00100010": {
            "vr": "PN",
            "Value": [{"Alphabetic": "Hong^Gildong", "Ideographic": "洪^吉洞", "Phonetic": "홍^길동"}],
        }
    },
    {"00100010": {"vr": "PN", "Value": [{"Ideographic": "洪^吉洞"}]}},
    {"00100010": {"vr": "PN", "Value": [{"Phonetic": "홍^길동"}, None, {"Alphabetic": "A^B"}]}},
    {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "A", "Phonetic": ""}]}},
    {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "A", "Other": "x"}]}},
    {"00100010": {"vr": "PN"}},
    {"00100020": {"vr": "LO", "Value": ["MÜLLER", None, "홍"]}},
    {"00081030": {"vr": "LO", "Value": []}},
    {"00080060": {"vr": "CS", "Value": ["MÜ"]}},  # Latin-1 in a VR without a character set
    {"00080060": {"vr": "CS", "Value": ["홍"]}},  # not Latin-1: pydicom decides (it refuses)
    {"0020000D": {"vr": "UI", "Value": ["1.2.3"]}},
    {"00081115": {"vr": "SQ", "Value": [{"00081150": {"vr": "UI", "Value": ["1.2"]}}]}},
    {"00081115": {"vr": "SQ"}},
    {"00201208": {"vr": "IS", "Value": [7, 12345]}},
    {"00201208": {"vr": "IS", "Value": ["7"]}},
    {"00201208": {"vr": "IS", "Value": [True]}},
    {"00280010": {"vr": "US", "Value": [512]}},
    {"00280010": {"vr": "US", "Value": [70000]}},
    {"00280030": {"vr": "DS", "Value": [0.5, 1e-10]}},
    {"00189089": {"vr": "FD", "Value": [1.5]}},
    {"00200037": {"vr": "DS"}},
    {"00204000": {"vr": "LT", "Value": ["a\\b"]}},
    {"00204000": {"vr": "LT", "Value": ["a", "b"]}},
    {"00080016": {"vr": "UN"}},
    {"00191001": {"vr": "UN"}},
    {"00191001": {"vr": "UN", "InlineBinary": "6AM="}},
    {"00080008": {"vr": "CS", "Value": ["ORIGINAL", "PRIMARY"]}},
    {"00081032": {"vr": "SQ", "Value": [{}]}},
    {"00100030": {"vr": "DA", "Value": ["2" * 70000]}},  # longer than a 2-byte length
]


@functools.cache
def _documents() -> list[dict[str, Any]]:
    assert CORPUS.is_dir(), f"the shared corpus is expected at {CORPUS}"
    documents = []
    for path in sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.name != "MANIFEST.md"):
        try:
            metadata = parse_instance(path, ParseLimits()).metadata
        except InstanceRejected:
            continue
        documents.append({k: v for k, v in metadata.items() if "BulkDataURI" not in v and k != "00080005"})
    return documents


def _reference(document: dict[str, Any], implicit: bool, little: bool, deflated: bool) -> bytes | type[Exception]:  # noqa: FBT001
    try:
        dataset = Dataset.from_json({**CHARSET, **document})
        encoded = encode(dataset, implicit, little, deflated)
    except Exception as exc:  # noqa: BLE001  what pydicom refuses, both refuse
        return type(exc)
    return encoded if encoded is not None else ValueError


def _ours(document: dict[str, Any], syntax: str) -> bytes | type[Exception]:
    implicit, little, deflated = SYNTAXES[syntax]
    try:
        items = [encode_element(int(tag, 16), element) for tag, element in {**CHARSET, **document}.items()]
        dataset = to_dataset(items, implicit_vr=implicit)  # as find.py: Explicit VR LE unless Implicit
        encoded = encode(dataset, implicit, little, deflated)
    except Exception as exc:  # noqa: BLE001
        return type(exc)
    if little and not deflated:  # written directly, without pydicom's Dataset
        if encoded is None:
            with pytest.raises(Exception):  # noqa: B017  pynetdicom logged it and gave None
                dataset_bytes(items, implicit_vr=implicit)
        else:
            assert dataset_bytes(items, implicit_vr=implicit) == encoded
    return encoded if encoded is not None else ValueError


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_corpus_elements_as_pydicom_writes_them(syntax: str) -> None:
    implicit, little, deflated = SYNTAXES[syntax]
    compared = 0
    for document in _documents():
        for tag, element in document.items():
            single = {tag: element}
            assert _ours(single, syntax) == _reference(single, implicit, little, deflated), (tag, element)
            compared += 1
    assert compared > 5000


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_whole_documents_as_pydicom_writes_them(syntax: str) -> None:
    implicit, little, deflated = SYNTAXES[syntax]
    for document in _documents():
        assert _ours(document, syntax) == _reference(document, implicit, little, deflated)


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("document", EDGE_CASES, ids=lambda d: next(iter(d.values()))["vr"])
def test_edge_cases_as_pydicom_writes_them(document: dict[str, Any], syntax: str) -> None:
    implicit, little, deflated = SYNTAXES[syntax]
    assert _ours(document, syntax) == _reference(document, implicit, little, deflated)


def test_level_attributes_take_the_direct_path() -> None:
    """Every attribute the index keeps per level (what C-FIND mostly returns), sequences aside."""
    compared = 0
    for document in _documents():
        for tag, element in document.items():
            if tag in STUDY_TAGS | SERIES_TAGS | INSTANCE_TAGS and element["vr"] != "SQ":
                assert encode_element(int(tag, 16), element).value is not None, (tag, element)
                compared += 1
    assert compared > 4000
    for shape in (
        {"vr": "PN", "Value": [{"Alphabetic": "A", "Ideographic": "B", "Phonetic": "C"}]},
        {"vr": "IS", "Value": [3]},
        {"vr": "LO"},
    ):
        assert encode_element(0x00100010, shape).value is not None
