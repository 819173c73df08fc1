"""firmware: products, trusted keys, releases, rollouts, deployments

Revision ID: 0002_firmware
Revises: 0001_foundation
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_firmware"
down_revision = "0001_foundation"
branch_labels = None
depends_on = None

_ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "firmware_products",
        sa.Column("id", sa.Integer, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("created_at", _ts, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_firmware_products"),
        sa.UniqueConstraint("name", name="uq_firmware_products_name"),
    )
    op.create_table(
        "firmware_keys",
        sa.Column("id", sa.Integer, autoincrement=True),
        sa.Column("product_id", sa.Integer, nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("algorithm", sa.String(16), nullable=False),
        sa.Column("public_pem", sa.Text, nullable=False),
        sa.Column("label", sa.String(128)),
        sa.Column("created_at", _ts, nullable=False),
        sa.Column("revoked_at", _ts),
        sa.PrimaryKeyConstraint("id", name="pk_firmware_keys"),
        sa.ForeignKeyConstraint(
            ["product_id"],
            ["firmware_products.id"],
            ondelete="CASCADE",
            name="fk_firmware_keys_product_id_firmware_products",
        ),
        sa.UniqueConstraint("product_id", "key_id", name="uq_firmware_keys_product"),
    )
    op.create_index("ix_firmware_keys_product_id", "firmware_keys", ["product_id"])
    op.create_table(
        "firmware_releases",
        sa.Column("id", sa.Integer, autoincrement=True),
        sa.Column("product_id", sa.Integer, nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("v_major", sa.Integer, nullable=False),
        sa.Column("v_minor", sa.Integer, nullable=False),
        sa.Column("v_revision", sa.Integer, nullable=False),
        sa.Column("v_build", sa.BigInteger, nullable=False),
        sa.Column("security_counter", sa.BigInteger, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("target_name", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", _ts, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_firmware_releases"),
        sa.ForeignKeyConstraint(
            ["product_id"],
            ["firmware_products.id"],
            ondelete="CASCADE",
            name="fk_firmware_releases_product_id_firmware_products",
        ),
        sa.UniqueConstraint("product_id", "version", name="uq_firmware_releases_version"),
    )
    op.create_index("ix_firmware_releases_product_id", "firmware_releases", ["product_id"])
    op.create_table(
        "firmware_rollouts",
        sa.Column("id", sa.Integer, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("product_id", sa.Integer, nullable=False),
        sa.Column("release_id", sa.Integer, nullable=False),
        sa.Column("previous_release_id", sa.Integer),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("success_threshold", sa.Integer, nullable=False),
        sa.Column("error_threshold", sa.Integer, nullable=False),
        sa.Column("error_action", sa.String(8), nullable=False),
        sa.Column("current_group", sa.Integer, nullable=False),
        sa.Column("groups", sa.JSON, nullable=False),
        sa.Column("created_at", _ts, nullable=False),
        sa.Column("updated_at", _ts, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_firmware_rollouts"),
        sa.UniqueConstraint("name", name="uq_firmware_rollouts_name"),
        sa.ForeignKeyConstraint(
            ["product_id"],
            ["firmware_products.id"],
            name="fk_firmware_rollouts_product_id_firmware_products",
        ),
        sa.ForeignKeyConstraint(
            ["release_id"],
            ["firmware_releases.id"],
            name="fk_firmware_rollouts_release_id_firmware_releases",
        ),
        sa.ForeignKeyConstraint(
            ["previous_release_id"],
            ["firmware_releases.id"],
            name="fk_firmware_rollouts_previous_release_id_firmware_releases",
        ),
    )
    op.create_index("ix_firmware_rollouts_product_id", "firmware_rollouts", ["product_id"])
    op.create_table(
        "firmware_deployments",
        sa.Column("rollout_id", sa.Integer, nullable=False),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("group_index", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("detail", sa.String(512)),
        sa.Column("updated_at", _ts, nullable=False),
        sa.PrimaryKeyConstraint("rollout_id", "device_id", name="pk_firmware_deployments"),
        sa.ForeignKeyConstraint(
            ["rollout_id"],
            ["firmware_rollouts.id"],
            ondelete="CASCADE",
            name="fk_firmware_deployments_rollout_id_firmware_rollouts",
        ),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            ondelete="CASCADE",
            name="fk_firmware_deployments_device_id_devices",
        ),
    )
    op.create_index(
        "ix_firmware_deployments_device_state", "firmware_deployments", ["device_id", "state"]
    )
    op.create_index(
        "ix_firmware_deployments_rollout_group",
        "firmware_deployments",
        ["rollout_id", "group_index"],
    )


def downgrade() -> None:
    op.drop_table("firmware_deployments")
    op.drop_table("firmware_rollouts")
    op.drop_table("firmware_releases")
    op.drop_table("firmware_keys")
    op.drop_table("firmware_products")
