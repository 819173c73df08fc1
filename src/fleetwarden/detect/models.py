"""Registry tables of the detection subsystem (migration ``0002_detect``).

Alerts keep the device id as plain text, not a foreign key: an alert about a device
must survive the device's removal (it is evidence). Suppressions expire by time and are
matched on device and/or detector key prefix.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fleetwarden.registry.models import Base, utcnow


class DetectAlert(Base):
    __tablename__ = "detect_alerts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    dedup_key: Mapped[str] = mapped_column(String(300))
    device_id: Mapped[str | None] = mapped_column(String(128))
    key: Mapped[str] = mapped_column(String(160))
    severity: Mapped[str] = mapped_column(String(16))
    title: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="open")
    verification: Mapped[str] = mapped_column(String(16), default="unverified")
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    count: Mapped[int] = mapped_column(Integer, default=1)
    window_start: Mapped[int] = mapped_column(BigInteger)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    acknowledged_by: Mapped[str | None] = mapped_column(String(200))
    resolved_by: Mapped[str | None] = mapped_column(String(200))
    note: Mapped[str | None] = mapped_column(Text)
    mitigation: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    __table_args__ = (
        Index("ix_detect_alerts_dedup_key", "dedup_key"),
        Index("ix_detect_alerts_status", "status"),
        Index("ix_detect_alerts_device_id", "device_id"),
    )


class DetectSuppression(Base):
    __tablename__ = "detect_suppressions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str | None] = mapped_column(String(128))
    key_prefix: Mapped[str | None] = mapped_column(String(160))
    reason: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class DetectRule(Base):
    """Rules declared through the API (rules from the file are merged at load)."""

    __tablename__ = "detect_rules"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
