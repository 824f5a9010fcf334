"""Which attributes belong to which query level.

From PS3.18 Table 10.6.3-3 and the Patient/Study modules; used to cut an instance's DICOM JSON
into study, series and instance pieces.
"""

from __future__ import annotations

from typing import Any

import orjson

SPECIFIC_CHARACTER_SET = "00080005"

STUDY_TAGS = frozenset(
    {
        SPECIFIC_CHARACTER_SET,
        "00080020",  # StudyDate
        "00080030",  # StudyTime
        "00080050",  # AccessionNumber
        "00080051",  # IssuerOfAccessionNumberSequence
        "00080090",  # ReferringPhysicianName
        "00080201",  # TimezoneOffsetFromUTC
        "00081030",  # StudyDescription
        "00081032",  # ProcedureCodeSequence
        "00100010",  # PatientName
        "00100020",  # PatientID
        "00100021",  # IssuerOfPatientID
        "00100024",  # IssuerOfPatientIDQualifiersSequence
        "00100030",  # PatientBirthDate
        "00100040",  # PatientSex
        "00101002",  # OtherPatientIDsSequence
        "00101010",  # PatientAge
        "0020000D",  # StudyInstanceUID
        "00200010",  # StudyID
    }
)
SERIES_TAGS = frozenset(
    {
        SPECIFIC_CHARACTER_SET,
        "00080021",  # SeriesDate
        "00080031",  # SeriesTime
        "00080060",  # Modality
        "0008103E",  # SeriesDescription
        "00180015",  # BodyPartExamined
        "0020000E",  # SeriesInstanceUID
        "00200011",  # SeriesNumber
        "00200060",  # Laterality
        "00400244",  # PerformedProcedureStepStartDate
        "00400245",  # PerformedProcedureStepStartTime
        "00400275",  # RequestAttributesSequence
    }
)
INSTANCE_TAGS = frozenset(
    {
        SPECIFIC_CHARACTER_SET,
        "00080008",  # ImageType
        "00080016",  # SOPClassUID
        "00080018",  # SOPInstanceUID
        "00080023",  # ContentDate
        "00080033",  # ContentTime
        "00200013",  # InstanceNumber
        "00280008",  # NumberOfFrames
        "00280010",  # Rows
        "00280011",  # Columns
        "00280100",  # BitsAllocated
        "00280004",  # PhotometricInterpretation
    }
)


# In tag order, as the parsed metadata is: each piece comes out as filtering it would give.
_LEVEL_ORDER = tuple(tuple(sorted(tags)) for tags in (STUDY_TAGS, SERIES_TAGS, INSTANCE_TAGS))


def level_documents(metadata: dict[str, Any]) -> tuple[bytes, bytes, bytes]:
    """Study, series and instance pieces of one instance's DICOM JSON, serialized.

    Looks up each level's few tags rather than testing every element of the data set three
    times (a CT header has a few hundred).
    """
    return tuple(  # type: ignore[return-value]
        orjson.dumps({tag: metadata[tag] for tag in tags if tag in metadata}) for tags in _LEVEL_ORDER
    )
