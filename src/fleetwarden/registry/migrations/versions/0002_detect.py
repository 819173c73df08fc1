"""detect: alerts, suppressions, API-declared rules (control C9)

Revision ID: 0002_detect
Revises: 0001_foundation
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_detect"
down_revision = "0001_foundation"
branch_labels = None
depends_on = None

_ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "detect_alerts",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("dedup_key", sa.String(300), nullable=False),
        sa.Column("device_id", sa.String(128)),
        sa.Column("key", sa.String(160), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("verification", sa.String(16), nullable=False),
        sa.Column("evidence", sa.JSON, nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("window_start", sa.BigInteger, nullable=False),
        sa.Column("first_seen", _ts, nullable=False),
        sa.Column("last_seen", _ts, nullable=False),
        sa.Column("updated_at", _ts, nullable=False),
        sa.Column("acknowledged_by", sa.String(200)),
        sa.Column("resolved_by", sa.String(200)),
        sa.Column("note", sa.Text),
        sa.Column("mitigation", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_detect_alerts"),
    )
    op.create_index("ix_detect_alerts_dedup_key", "detect_alerts", ["dedup_key"])
    op.create_index("ix_detect_alerts_status", "detect_alerts", ["status"])
    op.create_index("ix_detect_alerts_device_id", "detect_alerts", ["device_id"])
    op.create_table(
        "detect_suppressions",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(128)),
        sa.Column("key_prefix", sa.String(160)),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", _ts, nullable=False),
        sa.Column("expires_at", _ts, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_detect_suppressions"),
    )
    op.create_index("ix_detect_suppressions_expires_at", "detect_suppressions", ["expires_at"])
    op.create_table(
        "detect_rules",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("definition", sa.JSON, nullable=False),
        sa.Column("updated_at", _ts, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_detect_rules"),
    )


def downgrade() -> None:
    op.drop_table("detect_rules")
    op.drop_index("ix_detect_suppressions_expires_at", table_name="detect_suppressions")
    op.drop_table("detect_suppressions")
    op.drop_index("ix_detect_alerts_device_id", table_name="detect_alerts")
    op.drop_index("ix_detect_alerts_status", table_name="detect_alerts")
    op.drop_index("ix_detect_alerts_dedup_key", table_name="detect_alerts")
    op.drop_table("detect_alerts")
