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
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
)

metadata = MetaData()

UID = String(64)
PN = String(324)

subscribers = Table(
    "subscribers",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("title", String(256)),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), server_default=func.now()),
)

principals = Table(
    "principals",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("subscriber_pk", Integer, ForeignKey("subscribers.pk", ondelete="CASCADE")),
    Column("kind", String(16), nullable=False),  # user | device
    Column("name", String(128), nullable=False, unique=True),
    Column("role", String(32), nullable=False),
    Column("password_hash", String(256)),
    Column("ae_titles", String(512)),  # devices: space-separated AE titles
    Column("allowed_addresses", String(1024)),  # devices: comma-separated CIDRs
    Column("disabled", Boolean, nullable=False, default=False),
    Column("failed_logins", Integer, nullable=False, default=0),
    Column("locked_until", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), server_default=func.now()),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column(
        "principal_pk", Integer, ForeignKey("principals.pk", ondelete="CASCADE"), nullable=False
    ),
    Column("key_id", String(32), nullable=False, unique=True),
    Column("key_hash", String(64), nullable=False),
    Column("label", String(128)),
    Column("created_at", DateTime(timezone=True), server_default=func.now()),
    Column("expires_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
)

revoked_tokens = Table(
    "revoked_tokens",
    metadata,
    Column("jti", String(64), primary_key=True),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

grants = Table(
    "grants",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("owner_pk", Integer, ForeignKey("subscribers.pk", ondelete="CASCADE"), nullable=False),
    Column("study_instance_uid", UID, nullable=False),
    Column("series_instance_uid", UID),
    Column("grantee_subscriber_pk", Integer, ForeignKey("subscribers.pk", ondelete="CASCADE")),
    Column("grantee_principal_pk", Integer, ForeignKey("principals.pk", ondelete="CASCADE")),
    Column("access", String(16), nullable=False),  # read | write
    Column("expires_at", DateTime(timezone=True)),
    Column("created_by", String(128)),
    Column("created_at", DateTime(timezone=True), server_default=func.now()),
)
Index("ix_grants_owner_study", grants.c.owner_pk, grants.c.study_instance_uid)
Index("ix_grants_grantee_subscriber", grants.c.grantee_subscriber_pk)
Index("ix_grants_grantee_principal", grants.c.grantee_principal_pk)

audit_events = Table(
    "audit_events",
    metadata,
    Column(
        "pk", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("time", DateTime(timezone=True), nullable=False, index=True),
    Column("event", String(32), nullable=False, index=True),
    Column("action", String(1), nullable=False),  # C R U D E (PS3.15 A.5.3.1)
    Column("outcome", Integer, nullable=False),  # 0 4 8 12
    Column("principal", String(128), index=True),
    Column("subscriber", String(64), index=True),
    Column("source", String(128)),
    Column("interface", String(16)),  # http | dimse | cli
    Column("study_instance_uid", UID, index=True),
    Column("patient_id", String(64)),
    Column("detail", Text),
)

studies = Table(
    "studies",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("owner_pk", Integer, ForeignKey("subscribers.pk"), nullable=False, index=True),
    Column("study_instance_uid", UID, nullable=False, index=True),
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
    UniqueConstraint("owner_pk", "study_instance_uid", name="uq_studies_owner_uid"),
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
    Column("owner_pk", Integer, ForeignKey("subscribers.pk"), nullable=False),
    Column("series_instance_uid", UID, nullable=False, index=True),
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
    UniqueConstraint("owner_pk", "series_instance_uid", name="uq_series_owner_uid"),
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
    Column("owner_pk", Integer, ForeignKey("subscribers.pk"), nullable=False),
    Column("sop_instance_uid", UID, nullable=False, index=True),
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
    # SHA-256 of the decoded pixels in canonical form (codecs/transcode.py), and how the
    # object was encoded when received (it may be stored transcoded, docs/operations.md)
    Column("pixel_digest", String(64)),
    Column("original_transfer_syntax_uid", UID),
    Column("original_planar_configuration", SmallInteger),
    Column("metadata_json", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), server_default=func.now()),
    UniqueConstraint("owner_pk", "sop_instance_uid", name="uq_instances_owner_uid"),
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
