"""Synthetic instances and small helpers shared by the contract tests (imported by them and conftest)."""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pixport.archive.node import Archive

CORPUS = Path(__file__).resolve().parents[2] / ".." / "shared" / "corpus"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
S3_ACCESS_KEY = "contract-test"
S3_SECRET_KEY = "contract-test-secret"  # noqa: S105  moto accepts any key


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- scale archives ------------------------------------------------------------------------


@dataclass
class PostgresDatabase:
    """A database created for this session; each archive gets a fresh schema in it."""

    host: str
    port: int
    user: str
    name: str
    schemas: list[str] = field(default_factory=list)

    def new_schema_url(self) -> str:
        schema = f"archive_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(host=self.host, port=self.port, user=self.user, dbname=self.name, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')  # a generated identifier, never input
        self.schemas.append(schema)
        # libpq's options: every connection of the pool sees only this archive's schema.
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{self.name}?options=-csearch_path%3D{schema}"


def scale_storage(request: pytest.FixtureRequest, data_dir: Path) -> dict[str, Any]:
    """``storage`` settings for a fresh scale archive (new schema, new bucket)."""
    database: PostgresDatabase = request.getfixturevalue("postgres_database")
    endpoint: str = request.getfixturevalue("s3_endpoint")
    return {
        "backend": "scale",
        "data_dir": data_dir,
        "database_url": database.new_schema_url(),
        "s3_endpoint_url": endpoint,
        "s3_bucket": f"pixport-{uuid.uuid4().hex[:20]}",
        "s3_region": "us-east-1",
        "s3_access_key_id": S3_ACCESS_KEY,
        "s3_secret_access_key": S3_SECRET_KEY,
    }


def close_archive(archive: Archive) -> None:
    """Close the index and, where it has connections of its own, the blob store."""
    archive.close()
    close_blobs = getattr(archive.blobs, "close", None)
    if close_blobs is not None:
        close_blobs()


# -- synthetic instances -----------------------------------------------------------------


@dataclass
class InstanceSpec:
    """A small synthetic Secondary Capture instance.  Names are the standard's examples."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str = field(default_factory=generate_uid)
    patient_name: str = "Doe^Jane"
    patient_id: str = "PX-000"
    issuer_of_patient_id: str = "HOSPITAL-A"
    study_date: str = "20240101"
    study_time: str = "120000"
    accession_number: str = "ACC-000"
    study_description: str = "SYNTHETIC"
    modality: str | None = "OT"
    series_number: int = 1
    instance_number: int = 1
    pixel_value: int = 0


def write_instance(spec: InstanceSpec, path: Path) -> Path:
    """Write ``spec`` as a DICOM Part 10 file (UTF-8) and return its path."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    meta.MediaStorageSOPInstanceUID = spec.sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = spec.sop_instance_uid
    ds.StudyInstanceUID = spec.study_instance_uid
    ds.SeriesInstanceUID = spec.series_instance_uid
    ds.PatientName = spec.patient_name
    ds.PatientID = spec.patient_id
    ds.IssuerOfPatientID = spec.issuer_of_patient_id
    ds.StudyDate = spec.study_date
    ds.StudyTime = spec.study_time
    ds.AccessionNumber = spec.accession_number
    ds.StudyDescription = spec.study_description
    if spec.modality is not None:
        ds.Modality = spec.modality
    ds.SeriesNumber = spec.series_number
    ds.InstanceNumber = spec.instance_number
    ds.ConversionType = "WSD"
    ds.Rows = 4
    ds.Columns = 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes([spec.pixel_value % 256]) * 16
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path
