"""pixel digest and original encoding of every instance (lossless transcoding proof)

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("pixel_digest", sa.String(length=64), nullable=True))
        batch.add_column(
            sa.Column("original_transfer_syntax_uid", sa.String(length=64), nullable=True)
        )
        batch.add_column(
            sa.Column("original_planar_configuration", sa.SmallInteger(), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("original_planar_configuration")
        batch.drop_column("original_transfer_syntax_uid")
        batch.drop_column("pixel_digest")
