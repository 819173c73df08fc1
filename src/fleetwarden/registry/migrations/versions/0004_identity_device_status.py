"""identity: index certificates by (device, status)

A device's active certificates are looked up at every enrolment (they are superseded
by the new one). With an index on ``device_id`` and another on ``status``, SQLite's
planner picks the status index for ``device_id IN (...) AND status = 'active'`` and
walks every active certificate of the fleet; one index on both columns serves the
look-up and, as its prefix, every query by device alone.

Revision ID: 0004_identity_device_status
Revises: 0003_identity_issuer
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "0004_identity_device_status"
down_revision = "0003_identity_issuer"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_identity_certificates_device_status",
        "identity_certificates",
        ["device_id", "status"],
    )
    op.drop_index("ix_identity_certificates_device_id", "identity_certificates")


def downgrade() -> None:
    op.create_index("ix_identity_certificates_device_id", "identity_certificates", ["device_id"])
    op.drop_index("ix_identity_certificates_device_status", "identity_certificates")
