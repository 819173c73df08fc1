"""Registry tables of the firmware control.

Invariants:
- a release row exists only for an image whose signature was verified against one of
  its product's trusted keys at publish time, and whose version and security counter
  were strictly higher than every earlier release of that product (anti-rollback);
- a rollout's deployments are fixed when the rollout is created (deterministic
  bucketing), so a device's stage never changes while the rollout runs;
- group counters (succeeded/failed) are kept next to the deployments they count and are
  updated in the same transaction as each device's feedback.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from fleetwarden.registry.models import Base, utcnow


class FirmwareProduct(Base):
    __tablename__ = "firmware_products"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class FirmwareKey(Base):
    """A public key trusted to sign a product's images."""

    __tablename__ = "firmware_keys"
    __table_args__ = (UniqueConstraint("product_id", "key_id", name="uq_firmware_keys_product"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    product_id: Mapped[int] = mapped_column(
        ForeignKey("firmware_products.id", ondelete="CASCADE"), index=True
    )
    key_id: Mapped[str] = mapped_column(String(64))
    algorithm: Mapped[str] = mapped_column(String(16))
    public_pem: Mapped[str] = mapped_column(Text)
    label: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class FirmwareRelease(Base):
    __tablename__ = "firmware_releases"
    __table_args__ = (
        UniqueConstraint("product_id", "version", name="uq_firmware_releases_version"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    product_id: Mapped[int] = mapped_column(
        ForeignKey("firmware_products.id", ondelete="CASCADE"), index=True
    )
    version: Mapped[str] = mapped_column(String(32))
    v_major: Mapped[int] = mapped_column(Integer)
    v_minor: Mapped[int] = mapped_column(Integer)
    v_revision: Mapped[int] = mapped_column(Integer)
    v_build: Mapped[int] = mapped_column(BigInteger)
    security_counter: Mapped[int] = mapped_column(BigInteger)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))  # of the whole image file
    digest: Mapped[str] = mapped_column(String(64))  # MCUboot signed digest
    key_id: Mapped[str] = mapped_column(String(64))
    target_name: Mapped[str] = mapped_column(String(255))  # TUF target path
    status: Mapped[str] = mapped_column(String(16), default="published")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class FirmwareRollout(Base):
    __tablename__ = "firmware_rollouts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("firmware_products.id"), index=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("firmware_releases.id"))
    previous_release_id: Mapped[int | None] = mapped_column(ForeignKey("firmware_releases.id"))
    #: running, paused, stopped, cancelled, completed
    state: Mapped[str] = mapped_column(String(16), default="running")
    success_threshold: Mapped[int] = mapped_column(Integer)  # percent of a group
    error_threshold: Mapped[int] = mapped_column(Integer)  # percent of a group
    error_action: Mapped[str] = mapped_column(String(8))  # pause | stop
    current_group: Mapped[int] = mapped_column(Integer, default=0)
    groups: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class FirmwareDeployment(Base):
    """One device in one rollout."""

    __tablename__ = "firmware_deployments"
    __table_args__ = (
        Index("ix_firmware_deployments_device_state", "device_id", "state"),
        Index("ix_firmware_deployments_rollout_group", "rollout_id", "group_index"),
    )

    rollout_id: Mapped[int] = mapped_column(
        ForeignKey("firmware_rollouts.id", ondelete="CASCADE"), primary_key=True
    )
    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    group_index: Mapped[int] = mapped_column(Integer)
    #: waiting (group not started), scheduled, proceeding, success, failure, cancelled
    state: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(String(512))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
