"""foundation: devices, groups, memberships, API tokens, event outbox

Revision ID: 0001_foundation
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_foundation"
down_revision = None
branch_labels = None
depends_on = None

_ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("model", sa.String(128)),
        sa.Column("hardware_revision", sa.String(64)),
        sa.Column("risk_class", sa.String(16), nullable=False),
        sa.Column("sector", sa.String(64)),
        sa.Column("firmware_version", sa.String(64)),
        sa.Column("key_storage", sa.String(32), nullable=False),
        sa.Column("apn", sa.String(16)),
        sa.Column("ip", sa.String(45)),
        sa.Column("ip_fixed", sa.Boolean, nullable=False),
        sa.Column("allowed_cidrs", sa.JSON, nullable=False),
        sa.Column("vlan", sa.Integer),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attributes", sa.JSON, nullable=False),
        sa.Column("created_at", _ts, nullable=False),
        sa.Column("updated_at", _ts, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_devices"),
    )
    op.create_table(
        "groups",
        sa.Column("id", sa.Integer, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("allowed_cidrs", sa.JSON, nullable=False),
        sa.Column("vlan", sa.Integer),
        sa.Column("created_at", _ts, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_groups"),
        sa.UniqueConstraint("name", name="uq_groups_name"),
    )
    op.create_table(
        "device_groups",
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("group_id", sa.Integer, nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            ondelete="CASCADE",
            name="fk_device_groups_device_id_devices",
        ),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["groups.id"],
            ondelete="CASCADE",
            name="fk_device_groups_group_id_groups",
        ),
        sa.PrimaryKeyConstraint("device_id", "group_id", name="pk_device_groups"),
    )
    op.create_index("ix_device_groups_group_id", "device_groups", ["group_id"])
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("created_at", _ts, nullable=False),
        sa.Column("expires_at", _ts),
        sa.Column("revoked_at", _ts),
        sa.Column("last_used_at", _ts),
        sa.PrimaryKeyConstraint("id", name="pk_api_tokens"),
    )
    op.create_table(
        "event_outbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), autoincrement=True),
        sa.Column("created_at", _ts, nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("relayed_at", _ts),
        sa.PrimaryKeyConstraint("id", name="pk_event_outbox"),
    )
    op.create_index("ix_event_outbox_relayed_at", "event_outbox", ["relayed_at"])


def downgrade() -> None:
    op.drop_table("event_outbox")
    op.drop_table("api_tokens")
    op.drop_index("ix_device_groups_group_id", table_name="device_groups")
    op.drop_table("device_groups")
    op.drop_table("groups")
    op.drop_table("devices")
