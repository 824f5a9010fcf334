"""Deterministic synthetic studies for the demo: real pixel data, synthetic people, no PHI.

Patients have Korean names, some in UTF-8 (ISO_IR 192) and some in ISO 2022 IR 149, with all
three component groups as Korean systems write them.  UIDs are derived from a fixed seed
(``2.25.<integer>``), so the same command always makes the same studies.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
US_MULTIFRAME_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"


@dataclass(frozen=True, slots=True)
class SamplePatient:
    """A synthetic patient."""

    patient_id: str
    name: str
    birth_date: str
    sex: str
    charset: str


PATIENTS = (
    SamplePatient("PP-0001", "Hong^Gildong=洪^吉洞=홍^길동", "19800101", "M", "ISO 2022 IR 149"),
    SamplePatient("PP-0002", "Kim^Minji=金^敏智=김^민지", "19920315", "F", "ISO_IR 192"),
    SamplePatient("PP-0003", "Lee^Seojun=李^瑞俊=이^서준", "19671130", "M", "ISO_IR 192"),
)


def sample_uid(*parts: object) -> str:
    """A deterministic UID under the 2.25 root (UUID-derived form, PS3.5 B.2)."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()[:16]
    return "2.25." + str(int.from_bytes(digest, "big"))


def _charset_value(charset: str) -> str | list[str]:
    return ["", "ISO 2022 IR 149"] if charset == "ISO 2022 IR 149" else charset


def _base(patient: SamplePatient, study_key: str, series_key: str, sop_class: str, number: int) -> Dataset:
    sop_uid = sample_uid(study_key, series_key, number)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = _charset_value(patient.charset)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = sample_uid(study_key)
    ds.SeriesInstanceUID = sample_uid(study_key, series_key)
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = "PIXPORT-DEMO"
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.StudyDate = "20261101"
    ds.StudyTime = "093000"
    ds.AccessionNumber = "A" + hashlib.sha256(study_key.encode()).hexdigest()[:8].upper()
    ds.StudyID = "1"
    ds.ReferringPhysicianName = "Park^Jiwoo=朴^智友=박^지우"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    return ds


def _phantom(size: int, slice_position: float, seed: int) -> np.ndarray:
    """A smooth body-like phantom in Hounsfield-ish values, with a little noise."""
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    body = (x**2 / 0.8 + y**2 / 0.6) < 1
    organ = ((x - 0.25) ** 2 + (y + 0.1) ** 2) < (0.15 + 0.05 * np.sin(slice_position * 6)) ** 2
    bone = (np.abs(np.hypot(x, y + 0.35) - 0.12) < 0.03) & body  # noqa: PLR2004  a 3%-thick ring
    image = np.where(body, 40.0, -1000.0) + np.where(organ, 60.0, 0.0) + np.where(bone, 900.0, 0.0)
    rng = np.random.default_rng(seed)
    return image + rng.normal(0, 8, image.shape)


def ct_series(patient: SamplePatient, study_key: str, slices: int = 40, size: int = 256) -> Iterator[Dataset]:
    """An axial CT series, 16-bit signed, with rescale and a soft-tissue window."""
    for number in range(1, slices + 1):
        ds = _base(patient, study_key, "ct", CT_IMAGE_STORAGE, number)
        ds.Modality = "CT"
        ds.StudyDescription = "CT CHEST"
        ds.SeriesDescription = "Axial 5mm"
        ds.BodyPartExamined = "CHEST"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        position = number / slices
        hu = _phantom(size, position, number)
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        stored = np.clip(hu + 1024, 0, 4095).astype(np.int16)
        _pixels(ds, stored, bits=16, signed=True)
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        ds.SliceThickness = 5
        ds.ImagePositionPatient = [-150, -150, -5.0 * number]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [300 / size, 300 / size]
        yield ds


def mr_series(patient: SamplePatient, study_key: str, slices: int = 20, size: int = 192) -> Iterator[Dataset]:
    """A sagittal MR series, 16-bit unsigned."""
    for number in range(1, slices + 1):
        ds = _base(patient, study_key, "mr", MR_IMAGE_STORAGE, number)
        ds.Modality = "MR"
        ds.StudyDescription = "MR BRAIN"
        ds.SeriesDescription = "T1 SAG"
        ds.BodyPartExamined = "HEAD"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M"]
        intensity = np.clip((_phantom(size, number / slices, 100 + number) + 1000) * 0.8, 0, 4000).astype(np.uint16)
        _pixels(ds, intensity, bits=16, signed=False)
        ds.WindowCenter = 600
        ds.WindowWidth = 1200
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.EchoTime = 12
        ds.RepetitionTime = 500
        ds.MagneticFieldStrength = 3
        ds.ImagePositionPatient = [0, -120, 120 - 4.0 * number]
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        ds.PixelSpacing = [1.0, 1.0]
        yield ds


def cr_image(patient: SamplePatient, study_key: str, size: int = 512) -> Dataset:
    """A chest radiograph, MONOCHROME2, 12 bits stored."""
    ds = _base(patient, study_key, "cr", CR_IMAGE_STORAGE, 1)
    ds.Modality = "CR"
    ds.StudyDescription = "CHEST PA"
    ds.SeriesDescription = "PA"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    image = np.clip((_phantom(size, 0.5, 7) + 1000) * 1.5, 0, 4095).astype(np.uint16)
    _pixels(ds, image, bits=16, signed=False, stored=12)
    ds.WindowCenter = 1800
    ds.WindowWidth = 3000
    return ds


def us_cine(patient: SamplePatient, study_key: str, frames: int = 12, size: int = 160) -> Dataset:
    """A multi-frame RGB ultrasound cine loop."""
    ds = _base(patient, study_key, "us", US_MULTIFRAME_STORAGE, 1)
    ds.Modality = "US"
    ds.StudyDescription = "US ABDOMEN"
    ds.SeriesDescription = "Cine"
    y, x = np.mgrid[0:size, 0:size]
    cine = np.zeros((frames, size, size, 3), dtype=np.uint8)
    for frame in range(frames):
        speckle = np.random.default_rng(frame).integers(0, 60, (size, size))
        wave = (np.sin((x + frame * 4) / 9.0) * np.cos(y / 13.0) + 1) * 90
        gray = np.clip(wave + speckle, 0, 255).astype(np.uint8)
        cine[frame, ..., 0] = gray
        cine[frame, ..., 1] = gray
        cine[frame, ..., 2] = np.clip(gray.astype(int) + 20, 0, 255).astype(np.uint8)
    ds.NumberOfFrames = frames
    ds.FrameTime = 40.0
    ds.FrameIncrementPointer = 0x00181063
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows = size
    ds.Columns = size
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = cine.tobytes()
    return ds


def _pixels(ds: Dataset, array: np.ndarray, *, bits: int, signed: bool, stored: int | None = None) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = array.shape
    ds.BitsAllocated = bits
    ds.BitsStored = stored or bits
    ds.HighBit = (stored or bits) - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = array.astype("<i2" if signed else "<u2").tobytes()


def sample_studies(scale: int = 1) -> Iterator[Dataset]:
    """Every demo instance: for each patient a CT, an MR, a CR and an ultrasound cine."""
    for index, patient in enumerate(PATIENTS):
        yield from ct_series(patient, f"ct-{index}", slices=20 * scale)
        yield from mr_series(patient, f"mr-{index}", slices=10 * scale)
        yield cr_image(patient, f"cr-{index}")
        yield us_cine(patient, f"us-{index}")


@dataclass(frozen=True, slots=True)
class SampleHospital:
    """A synthetic hospital of the demo network, and which studies it made of which patients."""

    code: str
    name_ko: str
    name_en: str
    id_prefix: str
    studies: tuple[tuple[int, str], ...]
    """(index into PATIENTS, kind: ct | mr | cr | us)."""


HOSPITALS = (
    SampleHospital("HANBIT", "한빛대학교병원", "Hanbit University Hospital", "HB", ((0, "ct"), (1, "cr"), (2, "ct"))),
    SampleHospital("PUREUN", "푸른바다병원", "Pureun Bada Hospital", "PB", ((0, "mr"), (1, "mr"))),
    SampleHospital("SAEBOM", "새봄의료원", "Saebom Medical Center", "SB", ((0, "us"), (2, "cr"), (1, "us"))),
)

# Synthetic resident registration numbers of the sample patients (the birth dates match; the
# rest is made up).  The demo's gateways turn them into national keys and forget them.
SAMPLE_RRNS = ("800101-1000001", "920315-2000002", "671130-1000003")


def hospital_studies(hospital: SampleHospital, scale: int = 1) -> Iterator[Dataset]:
    """The studies one demo hospital made: its own patient IDs (issuer: its code) and UIDs."""
    for patient_index, kind in hospital.studies:
        base = PATIENTS[patient_index]
        patient = SamplePatient(
            f"{hospital.id_prefix}-{patient_index + 1:05d}", base.name, base.birth_date, base.sex, base.charset
        )
        key = f"{hospital.code}-{kind}-{patient_index}"
        if kind == "ct":
            datasets: Iterator[Dataset] = ct_series(patient, key, slices=20 * scale)
        elif kind == "mr":
            datasets = mr_series(patient, key, slices=10 * scale)
        elif kind == "cr":
            datasets = iter([cr_image(patient, key)])
        else:
            datasets = iter([us_cine(patient, key)])
        for ds in datasets:
            ds.IssuerOfPatientID = hospital.code
            ds.InstitutionName = hospital.name_en
            yield ds
