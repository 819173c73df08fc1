"""identity: the issuing CA of each certificate (issuing-CA rollover)

Revision ID: 0003_identity_issuer
Revises: 0002_identity
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_identity_issuer"
down_revision = "0002_identity"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL for existing rows: they were all issued by the first issuing CA (no rollover
    # existed before this revision).
    with op.batch_alter_table("identity_certificates") as batch:
        batch.add_column(sa.Column("issuer_key_id", sa.String(64)))
    op.create_index(
        "ix_identity_certificates_issuer_key_id", "identity_certificates", ["issuer_key_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_identity_certificates_issuer_key_id", "identity_certificates")
    with op.batch_alter_table("identity_certificates") as batch:
        batch.drop_column("issuer_key_id")
