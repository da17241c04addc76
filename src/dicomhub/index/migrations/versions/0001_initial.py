"""initial schema: studies, series, instances

Revision ID: 0001
Revises:
Create Date: 2026-11-26 19:44:36.130514
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


PATTERN_INDEXES = (
    ("studies", "patient_name_norm"),
    ("studies", "patient_id"),
    ("studies", "accession_number"),
    ("studies", "referring_physician_name_norm"),
)


def upgrade() -> None:

    op.create_table(
        "studies",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("patient_name", sa.String(length=324), nullable=True),
        sa.Column("patient_name_norm", sa.String(length=324), nullable=True),
        sa.Column("patient_name_words", sa.String(length=324), nullable=True),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("issuer_of_patient_id", sa.String(length=64), nullable=True),
        sa.Column("patient_birth_date", sa.String(length=16), nullable=True),
        sa.Column("patient_sex", sa.String(length=16), nullable=True),
        sa.Column("study_date", sa.String(length=16), nullable=True),
        sa.Column("study_time", sa.String(length=32), nullable=True),
        sa.Column("accession_number", sa.String(length=64), nullable=True),
        sa.Column("referring_physician_name", sa.String(length=324), nullable=True),
        sa.Column("referring_physician_name_norm", sa.String(length=324), nullable=True),
        sa.Column("referring_physician_name_words", sa.String(length=324), nullable=True),
        sa.Column("study_id", sa.String(length=64), nullable=True),
        sa.Column("study_description", sa.String(length=256), nullable=True),
        sa.Column("timezone_offset_from_utc", sa.String(length=16), nullable=True),
        sa.Column("modalities_in_study", sa.String(length=256), nullable=True),
        sa.Column("num_series", sa.Integer(), nullable=False),
        sa.Column("num_instances", sa.Integer(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=True,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=True,
        ),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("study_instance_uid"),
    )
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_studies_accession_number"), ["accession_number"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_studies_patient_birth_date"), ["patient_birth_date"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_studies_patient_id"), ["patient_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_studies_patient_name_norm"), ["patient_name_norm"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_studies_referring_physician_name_norm"),
            ["referring_physician_name_norm"],
            unique=False,
        )
        batch_op.create_index(batch_op.f("ix_studies_study_date"), ["study_date"], unique=False)
        batch_op.create_index(
            "ix_studies_study_date_time", ["study_date", "study_time"], unique=False
        )

    op.create_table(
        "series",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("study_pk", sa.Integer(), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=True),
        sa.Column("series_number", sa.Integer(), nullable=True),
        sa.Column("series_description", sa.String(length=256), nullable=True),
        sa.Column("series_date", sa.String(length=16), nullable=True),
        sa.Column("series_time", sa.String(length=32), nullable=True),
        sa.Column("body_part_examined", sa.String(length=64), nullable=True),
        sa.Column("performed_procedure_step_start_date", sa.String(length=16), nullable=True),
        sa.Column("performed_procedure_step_start_time", sa.String(length=32), nullable=True),
        sa.Column("scheduled_procedure_step_id", sa.String(length=64), nullable=True),
        sa.Column("requested_procedure_id", sa.String(length=64), nullable=True),
        sa.Column("timezone_offset_from_utc", sa.String(length=16), nullable=True),
        sa.Column("num_instances", sa.Integer(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=True,
        ),
        sa.ForeignKeyConstraint(["study_pk"], ["studies.pk"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("series_instance_uid"),
    )
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_series_modality"), ["modality"], unique=False)
        batch_op.create_index(batch_op.f("ix_series_study_pk"), ["study_pk"], unique=False)

    op.create_table(
        "instances",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("series_pk", sa.Integer(), nullable=False),
        sa.Column("study_pk", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("instance_number", sa.Integer(), nullable=True),
        sa.Column("content_date", sa.String(length=16), nullable=True),
        sa.Column("content_time", sa.String(length=32), nullable=True),
        sa.Column("rows", sa.Integer(), nullable=True),
        sa.Column("columns", sa.Integer(), nullable=True),
        sa.Column("bits_allocated", sa.Integer(), nullable=True),
        sa.Column("number_of_frames", sa.Integer(), nullable=True),
        sa.Column("transfer_syntax_uid", sa.String(length=64), nullable=False),
        sa.Column("storage_key", sa.String(length=512), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("pixel_data_offset", sa.BigInteger(), nullable=True),
        sa.Column("metadata_json", sa.LargeBinary(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=True,
        ),
        sa.ForeignKeyConstraint(["series_pk"], ["series.pk"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["study_pk"], ["studies.pk"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("sop_instance_uid"),
    )
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.create_index(
            "ix_instances_series_order", ["series_pk", "instance_number"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_instances_sop_class_uid"), ["sop_class_uid"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_instances_study_pk"), ["study_pk"], unique=False)

    if op.get_bind().dialect.name == "postgresql":
        # prefix LIKE (wildcard matching) can use these under any collation
        for table, column in PATTERN_INDEXES:
            op.execute(
                f"CREATE INDEX ix_{table}_{column}_pattern "
                f"ON {table} ({column} varchar_pattern_ops)"
            )


def downgrade() -> None:

    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_instances_study_pk"))
        batch_op.drop_index(batch_op.f("ix_instances_sop_class_uid"))
        batch_op.drop_index("ix_instances_series_order")

    op.drop_table("instances")
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_series_study_pk"))
        batch_op.drop_index(batch_op.f("ix_series_modality"))

    op.drop_table("series")
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_index("ix_studies_study_date_time")
        batch_op.drop_index(batch_op.f("ix_studies_study_date"))
        batch_op.drop_index(batch_op.f("ix_studies_referring_physician_name_norm"))
        batch_op.drop_index(batch_op.f("ix_studies_patient_name_norm"))
        batch_op.drop_index(batch_op.f("ix_studies_patient_id"))
        batch_op.drop_index(batch_op.f("ix_studies_patient_birth_date"))
        batch_op.drop_index(batch_op.f("ix_studies_accession_number"))

    op.drop_table("studies")
