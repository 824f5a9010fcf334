r"""QIDO-RS / C-FIND query parameters to the index's ``Query`` (PS3.18 8.3.4, PS3.4 C.2.2.2).

Matching keys are given by keyword (``PatientName``) or tag (``00100010``).  A value with ``*``
or ``?`` is a wildcard match; ``-`` in a date or time is a range; a list of UIDs (``,`` or
``\\``) is a UID list match; a Person Name matches any of its component groups,
case-insensitively, after NFC normalization, and with ``fuzzymatching=true`` any name
component that starts with the value.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from pixport.dicom.names import normalize
from pixport.errors import BadQuery
from pixport.storage.base import Level, Match, Query

MAX_LIMIT = 10_000
DEFAULT_LIMIT = 1_000

# keyword -> (index attribute, the levels at which it can be matched)
STUDY = frozenset({"study", "series", "instance"})
SERIES = frozenset({"series", "instance"})
INSTANCE = frozenset({"instance"})
MATCHABLE: dict[str, tuple[str, frozenset[str]]] = {
    "PatientID": ("patient_id", STUDY),
    "IssuerOfPatientID": ("issuer_of_patient_id", STUDY),
    "PatientName": ("patient_name", STUDY),
    "PatientBirthDate": ("patient_birth_date", STUDY),
    "PatientSex": ("patient_sex", STUDY),
    "StudyInstanceUID": ("study_instance_uid", STUDY),
    "StudyDate": ("study_date", STUDY),
    "StudyTime": ("study_time", STUDY),
    "AccessionNumber": ("accession_number", STUDY),
    "StudyID": ("study_id", STUDY),
    "StudyDescription": ("study_description", STUDY),
    "ReferringPhysicianName": ("referring_physician_name", STUDY),
    "ModalitiesInStudy": ("modalities_in_study", frozenset({"study"})),
    "SeriesInstanceUID": ("series_instance_uid", SERIES),
    "Modality": ("modality", SERIES),
    "SeriesNumber": ("series_number", SERIES),
    "SeriesDescription": ("series_description", SERIES),
    "SeriesDate": ("series_date", SERIES),
    "BodyPartExamined": ("body_part_examined", SERIES),
    "PerformedProcedureStepStartDate": ("performed_procedure_step_start_date", SERIES),
    "PerformedProcedureStepStartTime": ("performed_procedure_step_start_time", SERIES),
    "SOPInstanceUID": ("sop_instance_uid", INSTANCE),
    "SOPClassUID": ("sop_class_uid", INSTANCE),
    "InstanceNumber": ("instance_number", INSTANCE),
    "NumberOfFrames": ("number_of_frames", INSTANCE),
}
RANGE_VRS = frozenset({"DA", "TM", "DT"})
CONTROL = frozenset({"limit", "offset", "includefield", "fuzzymatching"})


@dataclass(slots=True)
class ParsedQuery:
    """A query plus what the response needs: extra fields and warnings for unsupported keys."""

    query: Query
    include_fields: set[str] = field(default_factory=set)
    include_all: bool = False
    warnings: list[str] = field(default_factory=list)


def resolve_keyword(key: str) -> tuple[str, str]:
    """(keyword, tag as 8 uppercase hex digits) of a keyword or tag given by a client."""
    candidate = key.strip()
    if len(candidate) == 8 and all(c in "0123456789abcdefABCDEF" for c in candidate):  # noqa: PLR2004
        tag = int(candidate, 16)
        keyword = keyword_for_tag(tag)
        return keyword or candidate.upper(), candidate.upper()
    tag_value = tag_for_keyword(candidate)
    if tag_value is None:
        msg = f"unknown attribute {candidate!r}"
        raise BadQuery(msg)
    return candidate, f"{tag_value:08X}"


def _match(keyword: str, attribute: str, value: str, *, fuzzy: bool) -> Match | None:
    if value == "":
        return None  # universal matching: only asks for the attribute to be returned
    if keyword == "ModalitiesInStudy":
        if any(c in value for c in "*?"):
            return Match(attribute, "wildcard", value)
        return Match(attribute, "uids", [v for v in value.replace("\\", ",").split(",") if v])
    vr = dictionary_VR(tag_for_keyword(keyword) or 0)
    if vr == "PN":
        text = normalize(value).strip().rstrip("^")
        if fuzzy:
            return Match(attribute, "fuzzy", text.replace("*", "").replace("?", ""))
        return Match(attribute, "name", text)
    if vr == "UI":
        uids = [v.strip() for v in value.replace("\\", ",").split(",") if v.strip()]
        return (
            Match(attribute, "uids", uids) if len(uids) > 1 else Match(attribute, "single", uids[0] if uids else value)
        )
    if vr in RANGE_VRS:
        return _date_time_match(keyword, attribute, vr, value)
    if "\\" in value:
        return Match(attribute, "uids", value.split("\\"))
    if any(c in value for c in "*?"):
        return Match(attribute, "wildcard", value)
    return Match(attribute, "single", value)


def _date_time_match(keyword: str, attribute: str, vr: str, value: str) -> Match:
    value = value.replace(":", "").strip()
    if "-" not in value:
        if not value.replace(".", "").replace("*", "").isdigit():
            msg = f"{keyword} is not a {vr}"
            raise BadQuery(msg)
        return Match(attribute, "wildcard" if "*" in value else "single", value)
    low, _, high = (part.strip() for part in value.partition("-"))
    if not (low or high):
        msg = f"{keyword} range has no bound"
        raise BadQuery(msg)
    if any(bound and not bound.replace(".", "").isdigit() for bound in (low, high)):
        msg = f"{keyword} range bound is not a {vr}"
        raise BadQuery(msg)
    return Match(attribute, "range", (low, high))


def _integer(name: str, values: list[str], default: int, maximum: int) -> int:
    if not values:
        return default
    try:
        number = int(values[-1])
    except ValueError as exc:
        msg = f"{name} must be a whole number"
        raise BadQuery(msg) from exc
    if number < 0:
        msg = f"{name} must not be negative"
        raise BadQuery(msg)
    return min(number, maximum)


def parse_query(
    level: Level,
    params: Iterable[tuple[str, str]],
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
) -> ParsedQuery:
    """Turn (already percent-decoded) query parameters into a ``ParsedQuery``; raise ``BadQuery``."""
    pairs = list(params)
    grouped: dict[str, list[str]] = {}
    for key, value in pairs:
        grouped.setdefault(key, []).append(value)
    fuzzy_values = grouped.get("fuzzymatching", [])
    if any(v.lower() not in {"true", "false"} for v in fuzzy_values):
        msg = "fuzzymatching must be true or false"
        raise BadQuery(msg)
    fuzzy = bool(fuzzy_values) and fuzzy_values[-1].lower() == "true"
    result = ParsedQuery(
        Query(
            level=level,
            study_instance_uid=study_instance_uid,
            series_instance_uid=series_instance_uid,
            limit=_integer("limit", grouped.get("limit", []), DEFAULT_LIMIT, MAX_LIMIT),
            offset=_integer("offset", grouped.get("offset", []), 0, 2**31),
        )
    )
    if grouped.get("limit") and int(grouped["limit"][-1]) > MAX_LIMIT:
        result.warnings.append(f"limit reduced to {MAX_LIMIT}")
    for value in grouped.get("includefield", []):
        for item in value.split(","):
            if item.strip() == "all":
                result.include_all = True
            elif item.strip():
                result.include_fields.add(resolve_keyword(item)[1])
    for key, value in pairs:
        if key in CONTROL:
            continue
        if "." in key:
            result.warnings.append(f"sequence matching on {key} is not supported; ignored")
            continue
        keyword, tag = resolve_keyword(key)
        result.include_fields.add(tag)
        known = MATCHABLE.get(keyword)
        if known is None or level not in known[1]:
            if value:
                result.warnings.append(f"{keyword} is not supported for matching at {level} level; ignored")
            continue
        match = _match(keyword, known[0], value, fuzzy=fuzzy)
        if match is not None:
            result.query.matches.append(match)
    return result
