"""identity: issued certificates, enrolment tokens, rotation policies, device keys

Revision ID: 0002_identity
Revises: 0001_foundation
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_identity"
down_revision = "0001_foundation"
branch_labels = None
depends_on = None

_ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "identity_certificates",
        sa.Column("serial", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("device_id", sa.String(128)),
        sa.Column("subject", sa.String(512), nullable=False),
        sa.Column("fingerprint_sha256", sa.String(64), nullable=False),
        sa.Column("public_key_sha256", sa.String(64), nullable=False),
        sa.Column("key_type", sa.String(16), nullable=False),
        sa.Column("not_before", _ts, nullable=False),
        sa.Column("not_after", _ts, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("issued_at", _ts, nullable=False),
        sa.Column("issued_via", sa.String(32), nullable=False),
        sa.Column("replaces_serial", sa.String(64)),
        sa.Column("revoked_at", _ts),
        sa.Column("revocation_reason", sa.String(32)),
        sa.Column("der", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("serial", name="pk_identity_certificates"),
        sa.UniqueConstraint(
            "fingerprint_sha256", name="uq_identity_certificates_fingerprint_sha256"
        ),
    )
    op.create_index("ix_identity_certificates_device_id", "identity_certificates", ["device_id"])
    op.create_index(
        "ix_identity_certificates_public_key_sha256",
        "identity_certificates",
        ["public_key_sha256"],
    )
    op.create_index("ix_identity_certificates_status", "identity_certificates", ["status"])
    op.create_table(
        "identity_enrollment_tokens",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("created_at", _ts, nullable=False),
        sa.Column("expires_at", _ts, nullable=False),
        sa.Column("used_at", _ts),
        sa.PrimaryKeyConstraint("id", name="pk_identity_enrollment_tokens"),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            ondelete="CASCADE",
            name="fk_identity_enrollment_tokens_device_id_devices",
        ),
        sa.UniqueConstraint("secret_hash", name="uq_identity_enrollment_tokens_secret_hash"),
    )
    op.create_index(
        "ix_identity_enrollment_tokens_device_id", "identity_enrollment_tokens", ["device_id"]
    )
    op.create_table(
        "identity_rotation_policies",
        sa.Column("group_id", sa.Integer, nullable=False),
        sa.Column("lifetime_days", sa.Integer, nullable=False),
        sa.Column("renew_fraction", sa.Float, nullable=False),
        sa.Column("max_key_age_days", sa.Integer, nullable=False),
        sa.Column("allow_key_reuse", sa.Boolean, nullable=False),
        sa.PrimaryKeyConstraint("group_id", name="pk_identity_rotation_policies"),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["groups.id"],
            ondelete="CASCADE",
            name="fk_identity_rotation_policies_group_id_groups",
        ),
    )
    op.create_table(
        "identity_device_keys",
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("public_key_sha256", sa.String(64), nullable=False),
        sa.Column("key_type", sa.String(16), nullable=False),
        sa.Column("key_first_certified_at", _ts, nullable=False),
        sa.Column("last_rotation_at", _ts),
        sa.Column("rotations", sa.Integer, nullable=False),
        sa.Column("current_serial", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("device_id", name="pk_identity_device_keys"),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            ondelete="CASCADE",
            name="fk_identity_device_keys_device_id_devices",
        ),
    )
    op.create_table(
        "identity_enroll_requests",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("public_key_sha256", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", _ts, nullable=False),
        sa.Column("decided_at", _ts),
        sa.Column("decided_by", sa.String(128)),
        sa.Column("note", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_identity_enroll_requests"),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            ondelete="CASCADE",
            name="fk_identity_enroll_requests_device_id_devices",
        ),
    )
    op.create_index(
        "ix_identity_enroll_requests_device_id", "identity_enroll_requests", ["device_id"]
    )


def downgrade() -> None:
    op.drop_table("identity_enroll_requests")
    op.drop_table("identity_device_keys")
    op.drop_table("identity_rotation_policies")
    op.drop_table("identity_enrollment_tokens")
    op.drop_table("identity_certificates")
