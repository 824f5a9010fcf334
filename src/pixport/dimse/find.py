"""C-FIND SCP (Patient Root and Study Root, every level), matching as QIDO-RS does.

The identifier's keys become the same ``Query`` that QIDO-RS builds (``archive.query``):
empty keys ask for the attribute only (universal matching), others match as in QIDO-RS.
Each response carries exactly the requested keys, in UTF-8 (``ISO_IR 192``), Person Names
with all three component groups.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import structlog
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from pixport.archive.node import Archive
from pixport.archive.query import parse_query
from pixport.dicom.fastwrite import UTF8_CHARSET, Encoded, dataset_bytes, encode_element, to_dataset
from pixport.dimse.pending import PendingWriter
from pixport.errors import BadQuery
from pixport.storage.base import Level, QueryRow

log = structlog.get_logger(__name__)

PENDING = 0xFF00
CANCEL = 0xFE00
SUCCESS = 0x0000
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
UNABLE_TO_PROCESS = 0xC000
PAGE = 1000
BATCH = 50  # pending responses per socket write
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DIRECT_SYNTAXES = frozenset({IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN})

LEVELS: dict[str, Level] = {"PATIENT": "study", "STUDY": "study", "SERIES": "series", "IMAGE": "instance"}
QUERY_RETRIEVE_LEVEL = 0x00080052
SPECIFIC_CHARACTER_SET = 0x00080005
PATIENT_ID = "00100020"
ISSUER_OF_PATIENT_ID = "00100021"
# Attributes computed per row rather than stored.
MODALITIES_IN_STUDY = "00080061"
NUMBER_OF_PATIENT_RELATED_STUDIES = "00201200"
NUMBER_OF_PATIENT_RELATED_SERIES = "00201202"
NUMBER_OF_PATIENT_RELATED_INSTANCES = "00201204"
NUMBER_OF_STUDY_RELATED_SERIES = "00201206"
NUMBER_OF_STUDY_RELATED_INSTANCES = "00201208"
NUMBER_OF_SERIES_RELATED_INSTANCES = "00201209"


def handle_c_find(event: Any, archive: Archive) -> Iterator[tuple[int, Dataset | None]]:
    """EVT_C_FIND: yield (Pending, identifier) per match, then the final status; never raise."""
    try:
        identifier = event.identifier
        level_name = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
        keys = [element for element in identifier if element.tag not in {QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET}]
    except Exception as exc:  # noqa: BLE001  an undecodable identifier is the peer's error, not ours
        log.info("dimse.find.bad_identifier", error=type(exc).__name__)
        yield IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, None
        return
    if level_name not in LEVELS:
        yield IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, None
        return
    try:
        answers = list(find_answers(archive, level_name, keys))
    except BadQuery as exc:
        log.info("dimse.find.bad_query", reason=str(exc))
        yield IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, None
        return
    except Exception as exc:  # noqa: BLE001  pynetdicom would answer 0xC311 with no reason
        log.error("dimse.find.failed", error=type(exc).__name__)  # noqa: TRY400
        yield UNABLE_TO_PROCESS, None
        return
    log.info("dimse.find", level=level_name, matches=len(answers))
    # Encoded in the context's transfer syntax when it is Implicit VR Little Endian, else in
    # Explicit VR Little Endian, which pynetdicom copies as is or converts (big endian, deflated).
    syntax = str(event.context.transfer_syntax)
    implicit_vr = syntax == IMPLICIT_VR_LITTLE_ENDIAN
    sent, cancelled = _send_directly(event, answers, syntax)
    if cancelled:
        yield CANCEL, None
        return
    for answer in answers[sent:]:
        if event.is_cancelled:
            yield CANCEL, None
            return
        yield PENDING, to_dataset(answer, implicit_vr=implicit_vr)
    yield SUCCESS, None


def _send_directly(event: Any, answers: list[list[Encoded]], syntax: str) -> tuple[int, bool]:
    """Pending responses written in batches (``dimse.pending``), where the association allows it.

    Returns how many were sent and whether the C-FIND was cancelled; pynetdicom sends the rest
    (all of them over TLS, and from an answer pydicom cannot encode, which it reports).
    """
    writer = PendingWriter.for_event(event) if syntax in DIRECT_SYNTAXES else None
    if writer is None:
        return 0, False
    implicit_vr = syntax == IMPLICIT_VR_LITTLE_ENDIAN
    sent = 0
    while sent < len(answers):
        if event.is_cancelled:
            return sent, True
        batch = answers[sent : sent + BATCH]
        try:
            identifiers = [dataset_bytes(answer, implicit_vr=implicit_vr) for answer in batch]
        except Exception:  # noqa: BLE001  pynetdicom answers 0xC312 when it meets this answer
            return sent, False
        if not writer.send(identifiers):
            return sent, False
        sent += len(batch)
    return sent, False


def query_parameters(keys: list[Any]) -> list[tuple[str, str]]:
    """(tag, value) pairs for ``parse_query`` from the identifier's elements (sequences skipped)."""
    params: list[tuple[str, str]] = []
    for element in keys:
        if element.VR == "SQ" or element.tag.is_private:
            continue
        params.append((f"{int(element.tag):08X}", _text(element.value)))
    return params


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, MultiValue | list):
        return "\\".join(_text(v) for v in value)
    if isinstance(value, bytes):
        return ""
    return str(value)


def find_answers(archive: Archive, level_name: str, keys: list[Any]) -> Iterator[list[Encoded]]:
    """Each response identifier of a C-FIND at ``level_name``, as encoded elements.

    The requested keys, Specific Character Set and Query/Retrieve Level, in no particular order.
    """
    level = LEVELS[level_name]
    parsed = parse_query(level, query_parameters(keys))
    rows = _all_rows(archive, parsed.query)
    requested = [(f"{int(e.tag):08X}", e.VR) for e in keys]
    empty = {tag: {"vr": _vr_of(tag, vr)} for tag, vr in requested}
    fixed = [
        encode_element(SPECIFIC_CHARACTER_SET, {"vr": "CS", "Value": [UTF8_CHARSET]}),
        encode_element(QUERY_RETRIEVE_LEVEL, {"vr": "CS", "Value": [level_name]}),
    ]
    if level_name == "PATIENT":
        for group in _by_patient(rows):
            document = _merged(group[0])
            document[NUMBER_OF_PATIENT_RELATED_STUDIES] = {"vr": "IS", "Value": [len(group)]}
            document[NUMBER_OF_PATIENT_RELATED_SERIES] = {
                "vr": "IS",
                "Value": [sum(r.number_of_series or 0 for r in group)],
            }
            document[NUMBER_OF_PATIENT_RELATED_INSTANCES] = {
                "vr": "IS",
                "Value": [sum(r.number_of_instances or 0 for r in group)],
            }
            yield _answer(archive, group[0], document, empty, fixed)
        return
    for row in rows:
        yield _answer(archive, row, _with_counts(row, level), empty, fixed)


def _all_rows(archive: Archive, query: Any) -> list[QueryRow]:
    rows: list[QueryRow] = []
    query.limit, query.offset = PAGE, 0
    while True:
        page = archive.index.search(query)
        rows.extend(page)
        if len(page) < PAGE:
            return rows
        query.offset += PAGE


def _by_patient(rows: list[QueryRow]) -> list[list[QueryRow]]:
    groups: dict[tuple[str, str], list[QueryRow]] = {}
    for row in rows:
        document = _merged(row)
        key = (_first(document.get(PATIENT_ID)), _first(document.get(ISSUER_OF_PATIENT_ID)))
        groups.setdefault(key, []).append(row)
    return list(groups.values())


def _first(element: dict[str, Any] | None) -> str:
    values = (element or {}).get("Value") or [""]
    return str(values[0])


def _merged(row: QueryRow) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for piece in row.documents:
        document.update(orjson.loads(piece))
    return document


def _with_counts(row: QueryRow, level: Level) -> dict[str, Any]:
    document = _merged(row)
    if level == "study":
        document[MODALITIES_IN_STUDY] = (
            {"vr": "CS", "Value": row.modalities_in_study} if row.modalities_in_study else {"vr": "CS"}
        )
        document[NUMBER_OF_STUDY_RELATED_SERIES] = {"vr": "IS", "Value": [row.number_of_series or 0]}
        document[NUMBER_OF_STUDY_RELATED_INSTANCES] = {"vr": "IS", "Value": [row.number_of_instances or 0]}
    elif level == "series":
        document[NUMBER_OF_SERIES_RELATED_INSTANCES] = {"vr": "IS", "Value": [row.number_of_instances or 0]}
    return document


def _answer(
    archive: Archive, row: QueryRow, document: dict[str, Any], empty: dict[str, dict[str, Any]], fixed: list[Encoded]
) -> list[Encoded]:
    """Exactly the requested keys; those the index does not keep come from a representative instance.

    ``empty`` maps each requested key to the element it takes when it has no value.
    """
    missing = [tag for tag in empty if "Value" not in document.get(tag, {})]
    if missing:
        first = archive.index.list_metadata(row.study_instance_uid, row.series_instance_uid, row.sop_instance_uid, 1)
        if first:
            instance = orjson.loads(first[0])
            for tag in missing:
                element = instance.get(tag)
                if element is not None and "BulkDataURI" not in element:
                    document[tag] = element
    answer = list(fixed)
    for tag, nothing in empty.items():
        element = document.get(tag)
        if element is None or "BulkDataURI" in element:
            element = nothing
        answer.append(encode_element(int(tag, 16), element))
    return answer


def _vr_of(tag: str, requested_vr: str) -> str:
    try:
        return str(dictionary_VR(int(tag, 16))).split(" or ")[0]
    except KeyError:
        return requested_vr if requested_vr and " " not in requested_vr else "UN"
