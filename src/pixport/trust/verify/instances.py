"""The instance check: each image matched to the manifest by SOP Instance UID, its UIDs and digests compared.

An image is ``intact`` when the file's bytes, or its data set after the File Meta, have the
manifest's digest; ``re-encoded`` when only its decoded pixels do (a lossless re-encoding);
``altered`` otherwise.  Listed instances not found are ``missing``, images not listed
``extra``.  The decoded pixels are computed only when the bytes do not match.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Iterable
from typing import IO

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

from pixport.dicom.digests import data_set_offset, pixel_data_sha256
from pixport.dicom.pixel_header import HEADER_ERRORS
from pixport.errors import NotFound, PixelDataError
from pixport.trust.image_sources import ImageFile, NotAnImage, SourceItem, Unreadable
from pixport.trust.manifest import Manifest, ManifestInstance
from pixport.trust.verify.identity import IDENTITY_ATTRIBUTES, check_identity, element_text
from pixport.trust.verify.report import InstanceCheck, VerificationReport

CHUNK = 1 << 20
_READ_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    *(keyword for keyword, _ in IDENTITY_ATTRIBUTES),
]

Progress = Callable[[int], None]
"""Called with the number of files looked at so far, after each one."""


def check_images(
    report: VerificationReport, manifest: Manifest, images: Iterable[SourceItem], progress: Progress | None = None
) -> None:
    """Compare every image with ``manifest``, one file at a time; add the results to ``report``."""
    listed = {instance.sop_instance_uid: instance for instance in manifest.instances}
    seen: set[str] = set()
    for done, item in enumerate(images, start=1):
        if isinstance(item, NotAnImage):
            report.ignored.append(item)
        elif isinstance(item, Unreadable):
            report.unreadable.append(item)
        else:
            check = _check_image(report, manifest, listed, item)
            if check is not None:
                check.duplicate = check.sop_instance_uid in seen
                if check.duplicate:
                    check.detail = f"{check.detail}; another copy of this instance".lstrip("; ")
                seen.add(check.sop_instance_uid)
                report.instances.append(check)
        if progress is not None:
            progress(done)
    report.instances.extend(
        InstanceCheck(
            sop_instance_uid=instance.sop_instance_uid,
            status="missing",
            series_instance_uid=instance.series_instance_uid,
            sop_class_uid=instance.sop_class_uid,
            listed_transfer_syntax_uid=instance.transfer_syntax_uid,
            detail="listed in the manifest, not among the images",
        )
        for instance in manifest.instances
        if instance.sop_instance_uid not in seen
    )


def _check_image(
    report: VerificationReport, manifest: Manifest, listed: dict[str, ManifestInstance], item: ImageFile
) -> InstanceCheck | None:
    try:
        dataset = _read_header(item.stream)
    except HEADER_ERRORS as exc:
        report.unreadable.append(Unreadable(item.name, f"DICOM header cannot be read: {type(exc).__name__}"))
        return None
    sop_instance_uid = element_text(dataset, "SOPInstanceUID")
    if not sop_instance_uid:
        report.unreadable.append(Unreadable(item.name, "DICOM object without a SOP Instance UID"))
        return None
    check_identity(report, manifest, dataset, sop_instance_uid, item.name)
    found = InstanceCheck(
        sop_instance_uid=sop_instance_uid,
        status="extra",
        source=item.name,
        series_instance_uid=element_text(dataset, "SeriesInstanceUID"),
        sop_class_uid=element_text(dataset, "SOPClassUID"),
        transfer_syntax_uid=_transfer_syntax(dataset),
    )
    study_instance_uid = element_text(dataset, "StudyInstanceUID")
    same_study = study_instance_uid == manifest.study.study_instance_uid
    instance = listed.get(sop_instance_uid)
    if instance is None:
        found.detail = "not in the manifest; " + (
            "of the same study" if same_study else f"of another study ({study_instance_uid or 'no Study Instance UID'})"
        )
        return found
    found.listed_transfer_syntax_uid = instance.transfer_syntax_uid
    if found.sop_class_uid != instance.sop_class_uid:
        found.problems.append(
            f"SOP Class UID {found.sop_class_uid or '(none)'}, the manifest lists {instance.sop_class_uid}"
        )
    if found.series_instance_uid != instance.series_instance_uid:
        found.problems.append(
            f"Series Instance UID {found.series_instance_uid or '(none)'}, "
            f"the manifest lists {instance.series_instance_uid}"
        )
    if not same_study:
        found.problems.append(
            f"Study Instance UID {study_instance_uid or '(none)'}, "
            f"the manifest lists {manifest.study.study_instance_uid}"
        )
    try:
        _compare_digests(found, instance, item.stream)
    except HEADER_ERRORS as exc:
        report.unreadable.append(Unreadable(item.name, f"DICOM file cannot be read: {type(exc).__name__}"))
        return None
    return found


def _compare_digests(found: InstanceCheck, instance: ManifestInstance, stream: IO[bytes]) -> None:
    """Set the status from the digests: the whole file or data set first, the pixels only if needed."""
    whole, data_set = _file_digests(stream)
    if instance.sha256 == whole:
        found.status, found.detail = "intact", "the file is byte for byte the one signed"
        return
    if instance.dataset_sha256 == data_set:
        found.status, found.detail = "intact", "the data set is byte for byte the one signed (File Meta rewritten)"
        return
    found.status = "altered"
    if instance.pixel_sha256 is None:
        found.detail = "the bytes differ (the instance has no pixel data to compare)"
        return
    try:
        pixels = pixel_data_sha256(stream)
    except (PixelDataError, NotFound) as exc:
        found.detail = "the bytes differ"
        found.problems.append(f"pixel data cannot be decoded: {exc}")
        return
    if pixels == instance.pixel_sha256:
        found.status = "re-encoded"
        if found.transfer_syntax_uid == instance.transfer_syntax_uid:
            found.detail = f"same decoded pixels; the header was rewritten ({_syntax_name(found.transfer_syntax_uid)})"
        else:
            found.detail = (
                f"same decoded pixels, stored as {_syntax_name(found.transfer_syntax_uid)}; "
                f"signed as {_syntax_name(instance.transfer_syntax_uid)}"
            )
        return
    found.pixels_differ = pixels is not None
    found.detail = "the bytes and the decoded pixel data differ" if pixels else "the bytes differ; no pixel data found"


def _file_digests(stream: IO[bytes]) -> tuple[str, str]:
    """SHA-256 of the whole file and of its data set after the File Meta (as ``dicom.digests``)."""
    start = data_set_offset(stream)
    whole, data_set = hashlib.sha256(), hashlib.sha256()
    stream.seek(0)
    position = 0
    while chunk := stream.read(CHUNK):
        whole.update(chunk)
        if position + len(chunk) > start:
            data_set.update(chunk[max(0, start - position) :])
        position += len(chunk)
    return whole.hexdigest(), data_set.hexdigest()


def _read_header(stream: IO[bytes]) -> Dataset:
    stream.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = pydicom.dcmread(stream, stop_before_pixels=True, force=True, specific_tags=_READ_TAGS)
        # Decode the text now, while warnings about odd character sets are silenced.
        for keyword, _ in IDENTITY_ATTRIBUTES:
            element_text(dataset, keyword)
    return dataset


def _transfer_syntax(dataset: Dataset) -> str:
    meta = getattr(dataset, "file_meta", None)
    return str(meta.get("TransferSyntaxUID", "") or "") if meta is not None else ""


def _syntax_name(uid: str) -> str:
    return UID(uid).name if uid else "an unknown transfer syntax"
