"""Index tables (SQLAlchemy Core).

One row per study, series and instance.  Every QIDO/C-FIND matching key of
:mod:`dicomhub.core.attributes` is a column with an index; person names are also kept
upper-cased (``*_norm``, case-insensitive matching) and as words (``*_words``, fuzzy
matching, PS3.18 §8.3.4.1).  The full DICOM JSON of each instance is kept compressed in
``instances.metadata_json`` so WADO-RS metadata never reads a file.

The schema is created and evolved by the Alembic migrations in ``migrations/``.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    func,
)

metadata = MetaData()

UID = String(64)
PN = String(324)

studies = Table(
    "studies",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("study_instance_uid", UID, nullable=False, unique=True),
    Column("patient_name", PN),
    Column("patient_name_norm", PN, index=True),
    Column("patient_name_words", PN),
    Column("patient_id", String(64), index=True),
    Column("issuer_of_patient_id", String(64)),
    Column("patient_birth_date", String(16), index=True),
    Column("patient_sex", String(16)),
    Column("study_date", String(16), index=True),
    Column("study_time", String(32)),
    Column("accession_number", String(64), index=True),
    Column("referring_physician_name", PN),
    Column("referring_physician_name_norm", PN, index=True),
    Column("referring_physician_name_words", PN),
    Column("study_id", String(64)),
    Column("study_description", String(256)),
    Column("timezone_offset_from_utc", String(16)),
    Column("modalities_in_study", String(256)),
    Column("num_series", Integer, nullable=False, default=0),
    Column("num_instances", Integer, nullable=False, default=0),
    Column("created_at", DateTime(timezone=True), server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), server_default=func.now()),
)

series = Table(
    "series",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column(
        "study_pk",
        Integer,
        ForeignKey("studies.pk", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("series_instance_uid", UID, nullable=False, unique=True),
    Column("modality", String(16), index=True),
    Column("series_number", Integer),
    Column("series_description", String(256)),
    Column("series_date", String(16)),
    Column("series_time", String(32)),
    Column("body_part_examined", String(64)),
    Column("performed_procedure_step_start_date", String(16)),
    Column("performed_procedure_step_start_time", String(32)),
    Column("scheduled_procedure_step_id", String(64)),
    Column("requested_procedure_id", String(64)),
    Column("timezone_offset_from_utc", String(16)),
    Column("num_instances", Integer, nullable=False, default=0),
    Column("created_at", DateTime(timezone=True), server_default=func.now()),
)

instances = Table(
    "instances",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("series_pk", Integer, ForeignKey("series.pk", ondelete="CASCADE"), nullable=False),
    Column(
        "study_pk",
        Integer,
        ForeignKey("studies.pk", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("sop_instance_uid", UID, nullable=False, unique=True),
    Column("sop_class_uid", UID, nullable=False, index=True),
    Column("instance_number", Integer),
    Column("content_date", String(16)),
    Column("content_time", String(32)),
    Column("rows", Integer),
    Column("columns", Integer),
    Column("bits_allocated", Integer),
    Column("number_of_frames", Integer),
    Column("transfer_syntax_uid", UID, nullable=False),
    Column("storage_key", String(512), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("pixel_data_offset", BigInteger),
    Column("metadata_json", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), server_default=func.now()),
)

remote_nodes = Table(
    "remote_nodes",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("ae_title", String(16), nullable=False, index=True),
    Column("host", String(255), nullable=False),
    Column("port", Integer, nullable=False),
    Column("description", String(256)),
    Column("created_at", DateTime(timezone=True), server_default=func.now()),
)

Index("ix_instances_series_order", instances.c.series_pk, instances.c.instance_number)
Index("ix_studies_study_date_time", studies.c.study_date, studies.c.study_time)
