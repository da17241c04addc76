"""subscribers, principals, credentials, grants, audit; studies owned by a subscriber

Every study, series and instance row gets an ``owner_pk``; UIDs become unique per owner,
so the same UID sent by two subscribers is two separate objects (docs/security.md).
Rows that existed before belong to the subscriber ``default``.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

NOW = sa.text("(CURRENT_TIMESTAMP)")
ARCHIVE = (
    ("studies", "study_instance_uid"),
    ("series", "series_instance_uid"),
    ("instances", "sop_instance_uid"),
)


def upgrade() -> None:
    op.create_table(
        "subscribers",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("title", sa.String(256)),
        sa.Column("disabled", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "principals",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column(
            "subscriber_pk", sa.Integer(), sa.ForeignKey("subscribers.pk", ondelete="CASCADE")
        ),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("password_hash", sa.String(256)),
        sa.Column("ae_titles", sa.String(512)),
        sa.Column("allowed_addresses", sa.String(1024)),
        sa.Column("disabled", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("failed_logins", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("locked_until", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "api_keys",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column(
            "principal_pk",
            sa.Integer(),
            sa.ForeignKey("principals.pk", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("label", sa.String(128)),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("key_id"),
    )
    op.create_table(
        "revoked_tokens",
        sa.Column("jti", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("jti"),
    )
    op.create_table(
        "grants",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column(
            "owner_pk",
            sa.Integer(),
            sa.ForeignKey("subscribers.pk", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("series_instance_uid", sa.String(64)),
        sa.Column(
            "grantee_subscriber_pk",
            sa.Integer(),
            sa.ForeignKey("subscribers.pk", ondelete="CASCADE"),
        ),
        sa.Column(
            "grantee_principal_pk", sa.Integer(), sa.ForeignKey("principals.pk", ondelete="CASCADE")
        ),
        sa.Column("access", sa.String(16), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.Column("created_by", sa.String(128)),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.create_index("ix_grants_owner_study", "grants", ["owner_pk", "study_instance_uid"])
    op.create_index("ix_grants_grantee_subscriber", "grants", ["grantee_subscriber_pk"])
    op.create_index("ix_grants_grantee_principal", "grants", ["grantee_principal_pk"])
    op.create_table(
        "audit_events",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("action", sa.String(1), nullable=False),
        sa.Column("outcome", sa.Integer(), nullable=False),
        sa.Column("principal", sa.String(128)),
        sa.Column("subscriber", sa.String(64)),
        sa.Column("source", sa.String(128)),
        sa.Column("interface", sa.String(16)),
        sa.Column("study_instance_uid", sa.String(64)),
        sa.Column("patient_id", sa.String(64)),
        sa.Column("detail", sa.Text()),
        sa.PrimaryKeyConstraint("pk"),
    )
    for col in ("time", "event", "principal", "subscriber", "study_instance_uid"):
        op.create_index(f"ix_audit_events_{col}", "audit_events", [col])

    # existing archive rows belong to the subscriber 'default'
    op.execute(
        "INSERT INTO subscribers (name, title, disabled) VALUES "
        "('default', 'objects stored before subscribers existed', false)"
    )
    owner = "(SELECT pk FROM subscribers WHERE name = 'default')"
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table, uid in ARCHIVE:
        op.add_column(table, sa.Column("owner_pk", sa.Integer(), nullable=True))
        op.execute(f"UPDATE {table} SET owner_pk = {owner}")
        with op.batch_alter_table(
            table,
            naming_convention={"uq": "uq_%(table_name)s_%(column_0_name)s"},
            recreate="always" if sqlite else "auto",
        ) as batch:
            batch.alter_column("owner_pk", existing_type=sa.Integer(), nullable=False)
            batch.drop_constraint(
                f"uq_{table}_{uid}" if sqlite else f"{table}_{uid}_key", type_="unique"
            )
            batch.create_unique_constraint(f"uq_{table}_owner_uid", ["owner_pk", uid])
            batch.create_foreign_key(f"fk_{table}_owner", "subscribers", ["owner_pk"], ["pk"])
            batch.create_index(f"ix_{table}_{uid}", [uid])
    op.create_index("ix_studies_owner_pk", "studies", ["owner_pk"])


def downgrade() -> None:
    raise NotImplementedError("0003 cannot be downgraded (UIDs may repeat across owners)")
