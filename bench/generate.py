"""Deterministic synthetic data for the archive benchmark.

One CT study (up to 500 axial slices of 512x512, 16-bit, a smooth phantom plus noise) and up
to 2,000 small studies (one 64x64 16-bit instance each, various modalities, dates and
patients).  Everything is synthetic: invented Korean and Latin names, no PHI.  UIDs are
``2.25.<int>`` derived from a hash of a fixed name, pixel data from fixed seeds, so the same
command writes the same bytes on every machine.

Each file depends only on its own index, so a smaller set (``--quick``) is a prefix of the
full one.  Files are written once to a cache folder and reused; a file that exists is not
rewritten.

    .venv/bin/python bench/generate.py [--ct 500] [--small 2000] [--out bench/.data]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

#: Bump when the generator's output changes; it names the cache folder and seeds every UID.
DATASET_VERSION = "v1"
DEFAULT_OUT = Path(__file__).resolve().parent / ".data"
FULL_CT = 500
FULL_SMALL = 2000
N_PATIENTS = 600
CT_SIZE = 512
SMALL_SIZE = 64

# Synthetic Korean names: romanized, hanja and hangul, as (family, given) pairs.
KOREAN_FAMILY = [
    ("KIM", "金", "김"),
    ("LEE", "李", "이"),
    ("PARK", "朴", "박"),
    ("CHOI", "崔", "최"),
    ("JUNG", "鄭", "정"),
    ("KANG", "姜", "강"),
    ("CHO", "趙", "조"),
    ("YOON", "尹", "윤"),
    ("JANG", "張", "장"),
    ("LIM", "林", "임"),
]
KOREAN_GIVEN = [
    ("MINJUN", "敏俊", "민준"),
    ("SEOYEON", "瑞妍", "서연"),
    ("JIHO", "智浩", "지호"),
    ("HAEUN", "夏恩", "하은"),
    ("DOYUN", "道潤", "도윤"),
    ("JIWOO", "智友", "지우"),
    ("SEOJUN", "瑞俊", "서준"),
    ("SUBIN", "秀彬", "수빈"),
    ("YEJUN", "睿俊", "예준"),
    ("JIMIN", "智敏", "지민"),
    ("HYUNWOO", "賢宇", "현우"),
    ("EUNJI", "恩智", "은지"),
]
# Synthetic Latin names; some need ISO_IR 100 (Latin-1) to be written.
LATIN_FAMILY = ["SMITH", "MÜLLER", "GARCÍA", "DUBOIS", "ROSSI", "JANSSEN", "SILVA", "NOVÁK", "O'BRIEN", "KOWALSKI"]
LATIN_GIVEN = ["JOHN", "MARÍA", "HANS", "CÉLINE", "LUCA", "ANNA", "JOÃO", "SØREN", "EMMA", "NOAH"]

# Modality -> (SOP Class UID, study description, body part)
MODALITIES = {
    "CR": ("1.2.840.10008.5.1.4.1.1.1", "XR CHEST PA", "CHEST"),
    "DX": ("1.2.840.10008.5.1.4.1.1.1.1", "XR KNEE 2 VIEWS", "KNEE"),
    "MG": ("1.2.840.10008.5.1.4.1.1.1.2", "MAMMO SCREENING", "BREAST"),
    "CT": ("1.2.840.10008.5.1.4.1.1.2", "CT HEAD WO CONTRAST", "HEAD"),
    "MR": ("1.2.840.10008.5.1.4.1.1.4", "MR BRAIN", "BRAIN"),
    "NM": ("1.2.840.10008.5.1.4.1.1.20", "NM BONE SCAN", "WHOLEBODY"),
    "XA": ("1.2.840.10008.5.1.4.1.1.12.1", "XA CORONARY", "HEART"),
    "PT": ("1.2.840.10008.5.1.4.1.1.128", "PET CT WHOLE BODY", "WHOLEBODY"),
}
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def make_uid(name: str) -> str:
    """A deterministic UID under the 2.25 arc (a 128-bit integer from a hash of ``name``)."""
    digest = hashlib.sha256(f"pixport-bench/{DATASET_VERSION}/{name}".encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


@dataclass(frozen=True)
class Patient:
    patient_id: str
    name: str  # DICOM PN, possibly with ideographic and phonetic groups
    charset: str
    birth_date: str
    sex: str

    @property
    def alphabetic(self) -> str:
        return self.name.split("=", 1)[0]


@dataclass(frozen=True)
class SmallStudy:
    index: int
    patient: Patient
    modality: str
    study_date: str
    study_time: str
    accession: str

    @property
    def study_uid(self) -> str:
        return make_uid(f"small/{self.index}/study")


@dataclass(frozen=True)
class Plan:
    """What one run ingests and what its queries should answer."""

    root: Path
    ct_files: list[Path]
    small_files: list[Path]
    ct_study_uid: str
    ct_patient: Patient
    small_studies: list[SmallStudy]

    @property
    def n_studies(self) -> int:
        return len(self.small_studies) + (1 if self.ct_files else 0)

    def all_patients(self) -> list[Patient]:
        pts = [s.patient for s in self.small_studies]
        if self.ct_files:
            pts.append(self.ct_patient)
        return pts

    def query_patient_id(self) -> str:
        """The PatientID with the most studies (ties: smallest ID): an exact query with a few hits."""
        counts = Counter(p.patient_id for p in self.all_patients())
        return min(counts, key=lambda pid: (-counts[pid], pid))

    def count_patient_id(self, patient_id: str) -> int:
        return sum(1 for p in self.all_patients() if p.patient_id == patient_id)

    def count_name_prefix(self, prefix: str) -> int:
        return sum(1 for p in self.all_patients() if p.alphabetic.startswith(prefix))


def _patients() -> list[Patient]:
    rng = random.Random(f"patients/{DATASET_VERSION}")  # noqa: S311 (synthetic data, not crypto)
    out = []
    for i in range(N_PATIENTS):
        if rng.random() < 0.6:
            fam = rng.choice(KOREAN_FAMILY)
            giv = rng.choice(KOREAN_GIVEN)
            name = f"{fam[0]}^{giv[0]}={fam[1]}^{giv[1]}={fam[2]}^{giv[2]}"
            charset = "ISO_IR 192"
        else:
            name = f"{rng.choice(LATIN_FAMILY)}^{rng.choice(LATIN_GIVEN)}"
            charset = "ISO_IR 100"
        birth = dt.date(1935, 1, 1) + dt.timedelta(days=rng.randrange(0, 365 * 85))
        out.append(Patient(f"PXB{i:06d}", name, charset, birth.strftime("%Y%m%d"), rng.choice("MF")))
    return out


def _small_study(index: int, patients: list[Patient]) -> SmallStudy:
    rng = random.Random(f"small/{DATASET_VERSION}/{index}")  # noqa: S311
    # About 3 studies per patient; a few frequent patients have about 8.
    patient = patients[rng.randrange(20) if rng.random() < 0.05 else rng.randrange(N_PATIENTS)]
    date = dt.date(2015, 1, 1) + dt.timedelta(days=rng.randrange(0, 3650))
    time_ = f"{rng.randrange(7, 20):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}"
    return SmallStudy(
        index=index,
        patient=patient,
        modality=rng.choice(list(MODALITIES)),
        study_date=date.strftime("%Y%m%d"),
        study_time=time_,
        accession=f"ACC{index:07d}",
    )


def ct_patient() -> Patient:
    return Patient("PXBCT0001", "PARK^JIWOO=朴^智友=박^지우", "ISO_IR 192", "19580412", "F")


def _file_meta(sop_class: str, sop_instance: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "PIXPORT_BENCH"
    return meta


def _patient_study(ds: Dataset, patient: Patient) -> None:
    ds.SpecificCharacterSet = patient.charset
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = "PIXPORT-BENCH"
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.ReferringPhysicianName = "SYNTHETIC^REFERRER"
    ds.InstitutionName = "PixPort Synthetic Hospital"
    ds.Manufacturer = "PixPort Bench (synthetic)"
    ds.ManufacturerModelName = "generate.py"


def _image_pixel(ds: Dataset, pixels: np.ndarray) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype("<u2").tobytes()


def _ct_pixels(index: int) -> np.ndarray:
    """A smooth torso-like phantom in HU plus noise, stored as HU + 1024 (12 bits)."""
    spacing = 0.7
    coords = (np.arange(CT_SIZE) - CT_SIZE / 2 + 0.5) * spacing
    x, y = np.meshgrid(coords, coords)
    z = index * 1.0
    frac = index / max(FULL_CT - 1, 1)  # position along the full 500-slice volume
    scale = 1.0 + 0.08 * np.sin(z / 60.0)
    hu = np.full((CT_SIZE, CT_SIZE), -1000.0)
    body = (x / (165 * scale)) ** 2 + (y / (115 * scale)) ** 2 <= 1.0
    hu[body] = 40.0 + 15.0 * np.cos(x[body] / 40.0) * np.sin(y[body] / 35.0)
    fat = body & ((x / (155 * scale)) ** 2 + (y / (105 * scale)) ** 2 > 1.0)
    hu[fat] = -90.0
    if 0.2 < frac < 0.55:  # lungs
        for cx in (-70.0, 70.0):
            lung = ((x - cx) / 55.0) ** 2 + ((y + 10.0) / 70.0) ** 2 <= 1.0
            hu[lung] = -850.0 + 30.0 * np.sin((x[lung] + y[lung]) / 12.0)
    spine = (x / 16.0) ** 2 + ((y - 75.0) / 16.0) ** 2 <= 1.0
    hu[spine] = 700.0
    for k, (cx, cy, cz, r, v) in enumerate(((-40, 10, 300, 45, 65), (50, -20, 330, 30, 55), (0, -40, 120, 25, 90))):
        rr2 = r * r - (z - cz) ** 2
        if rr2 > 0:
            organ = (x - cx) ** 2 + (y - cy) ** 2 <= rr2
            hu[organ] = v + 5.0 * k
    table = (y > 150) & (y < 160) & (np.abs(x) < 170)
    hu[table] = 200.0
    rng = np.random.default_rng(10_000 + index)
    hu += rng.normal(0.0, 12.0, hu.shape)
    return np.clip(np.rint(hu + 1024.0), 0, 4095).astype(np.uint16)


def _write(ds: Dataset, path: Path) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    ds.save_as(tmp, enforce_file_format=True)
    tmp.replace(path)


def write_ct_slice(path: Path, index: int) -> None:
    study_uid = make_uid("ct/study")
    sop_uid = make_uid(f"ct/instance/{index}")
    ds = Dataset()
    ds.file_meta = _file_meta(CT_IMAGE_STORAGE, sop_uid)
    _patient_study(ds, ct_patient())
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20240315"
    ds.StudyTime = "101500"
    ds.SeriesTime = "101712"
    ds.AcquisitionTime = ds.ContentTime = f"1017{12 + index // 100:02d}.{index % 100:02d}0000"
    ds.AccessionNumber = "ACCCT000001"
    ds.Modality = "CT"
    ds.StudyDescription = "CT CHEST ABDOMEN PELVIS WITH CONTRAST"
    ds.SeriesDescription = "AXIAL 1.0 STANDARD"
    ds.BodyPartExamined = "CHEST"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = make_uid("ct/series")
    ds.StudyID = "1"
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = index + 1
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = make_uid("ct/frame")
    ds.PositionReferenceIndicator = ""
    ds.KVP = 120
    ds.SliceThickness = 1.0
    ds.SpacingBetweenSlices = 1.0
    ds.ConvolutionKernel = "STANDARD"
    ds.ImagePositionPatient = [-178.85, -178.85, -float(index)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = -float(index)
    ds.PixelSpacing = [0.7, 0.7]
    ds.WindowCenter = [40, -600]
    ds.WindowWidth = [400, 1500]
    ds.WindowCenterWidthExplanation = ["SOFT TISSUE", "LUNG"]
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    _image_pixel(ds, _ct_pixels(index))
    _write(ds, path)


def write_small(path: Path, study: SmallStudy) -> None:
    sop_class, description, body_part = MODALITIES[study.modality]
    sop_uid = make_uid(f"small/{study.index}/instance")
    ds = Dataset()
    ds.file_meta = _file_meta(sop_class, sop_uid)
    _patient_study(ds, study.patient)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = study.study_time
    ds.AccessionNumber = study.accession
    ds.Modality = study.modality
    ds.StudyDescription = description
    ds.SeriesDescription = f"{description} SERIES 1"
    ds.BodyPartExamined = body_part
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = make_uid(f"small/{study.index}/series")
    ds.StudyID = str(study.index + 1)
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    if study.modality in {"CT", "MR", "PT", "NM"}:
        ds.FrameOfReferenceUID = make_uid(f"small/{study.index}/frame")
        ds.ImagePositionPatient = [-128.0, -128.0, 0.0]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [4.0, 4.0]
        ds.SliceThickness = 4.0
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    rng = np.random.default_rng(20_000 + study.index)
    yy, xx = np.mgrid[0:SMALL_SIZE, 0:SMALL_SIZE]
    smooth = 2048 + 900 * np.sin(xx / (5 + study.index % 7)) * np.cos(yy / (6 + study.index % 5))
    pixels = np.clip(np.rint(smooth + rng.normal(0, 40, smooth.shape)), 0, 4095).astype(np.uint16)
    _image_pixel(ds, pixels)
    _write(ds, path)


def build_plan(n_ct: int = FULL_CT, n_small: int = FULL_SMALL, out: Path = DEFAULT_OUT) -> Plan:
    """The file lists and expected query answers for a run; writes nothing."""
    if not 0 <= n_ct <= FULL_CT or not 0 <= n_small <= FULL_SMALL:
        raise ValueError(f"at most {FULL_CT} CT slices and {FULL_SMALL} small studies")
    root = out / DATASET_VERSION
    patients = _patients()
    return Plan(
        root=root,
        ct_files=[root / "ct" / f"ct{i:04d}.dcm" for i in range(n_ct)],
        small_files=[root / "small" / f"s{i:05d}.dcm" for i in range(n_small)],
        ct_study_uid=make_uid("ct/study"),
        ct_patient=ct_patient(),
        small_studies=[_small_study(i, patients) for i in range(n_small)],
    )


def ensure_data(plan: Plan, *, verbose: bool = True) -> Plan:
    """Write whatever files of ``plan`` are missing from the cache."""
    (plan.root / "ct").mkdir(parents=True, exist_ok=True)
    (plan.root / "small").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    written = 0
    for i, path in enumerate(plan.ct_files):
        if not path.exists():
            write_ct_slice(path, i)
            written += 1
    for study, path in zip(plan.small_studies, plan.small_files, strict=True):
        if not path.exists():
            write_small(path, study)
            written += 1
    if verbose and written:
        print(f"generated {written} files in {plan.root} ({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ct", type=int, default=FULL_CT, help="CT slices (default %(default)s)")
    parser.add_argument("--small", type=int, default=FULL_SMALL, help="small studies (default %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="cache folder (default bench/.data)")
    args = parser.parse_args(argv)
    plan = ensure_data(build_plan(args.ct, args.small, args.out))
    size = sum(p.stat().st_size for p in plan.ct_files + plan.small_files)
    qpid = plan.query_patient_id()
    print(f"{plan.root}: {len(plan.ct_files)} CT slices, {len(plan.small_files)} small studies, {size / 1e6:.1f} MB")
    print(f"CT study {plan.ct_study_uid}")
    print(f"PatientID={qpid}: {plan.count_patient_id(qpid)} studies; PatientName=KIM*: {plan.count_name_prefix('KIM')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
