"""The index's tables (SQLAlchemy Core), shared by the index store and its search statements."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, ForeignKey, Index, Integer, LargeBinary, MetaData, String, Table, Text

metadata = MetaData()

studies = Table(
    "studies",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("study_instance_uid", String(64), nullable=False, unique=True),
    Column("patient_id", Text),
    Column("issuer_of_patient_id", Text),
    Column("patient_name_groups", Text),
    Column("patient_name_tokens", Text),
    Column("patient_birth_date", String(16)),
    Column("patient_sex", String(16)),
    Column("study_date", String(16)),
    Column("study_time", String(32)),
    Column("accession_number", Text),
    Column("study_id", Text),
    Column("study_description", Text),
    Column("referring_physician_name_groups", Text),
    Column("referring_physician_name_tokens", Text),
    Column("study_json", LargeBinary, nullable=False),
    Column("created_at", String(32), nullable=False),
)
Index("ix_studies_patient_id", studies.c.patient_id)
Index("ix_studies_study_date", studies.c.study_date)
Index("ix_studies_accession_number", studies.c.accession_number)

series = Table(
    "series",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("series_instance_uid", String(64), nullable=False, unique=True),
    Column("study_pk", Integer, ForeignKey("studies.pk"), nullable=False),
    Column("modality", String(16)),
    Column("series_number", Integer),
    Column("series_description", Text),
    Column("series_date", String(16)),
    Column("body_part_examined", Text),
    Column("performed_procedure_step_start_date", String(16)),
    Column("performed_procedure_step_start_time", String(32)),
    Column("series_json", LargeBinary, nullable=False),
)
Index("ix_series_study_pk", series.c.study_pk)
Index("ix_series_modality", series.c.modality)

instances = Table(
    "instances",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("sop_instance_uid", String(64), nullable=False, unique=True),
    Column("series_pk", Integer, ForeignKey("series.pk"), nullable=False),
    Column("study_pk", Integer, ForeignKey("studies.pk"), nullable=False),
    Column("sop_class_uid", String(64), nullable=False),
    Column("instance_number", Integer),
    Column("number_of_frames", Integer),
    Column("rows", Integer),
    Column("columns", Integer),
    Column("transfer_syntax_uid", String(64), nullable=False),
    Column("digest", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("instance_json", LargeBinary, nullable=False),
    Column("metadata_json", LargeBinary, nullable=False),
    Column("source", Text, nullable=False),
    Column("received_at", String(32), nullable=False),
)
Index("ix_instances_series_pk", instances.c.series_pk, instances.c.instance_number)
Index("ix_instances_study_pk", instances.c.study_pk)
Index("ix_instances_digest", instances.c.digest)

conflicts = Table(
    "conflicts",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("sop_instance_uid", String(64), nullable=False),
    Column("stored_digest", String(64), nullable=False),
    Column("offered_digest", String(64), nullable=False),
    Column("source", Text, nullable=False),
    Column("received_at", String(32), nullable=False),
)
