"""Registry tables of the identity control (C1 unique identity, C5 key rotation).

- ``identity_certificates``: every certificate the fleet CA issued, with serial,
  fingerprints of the certificate and of its public key, validity, status and the
  serial it replaced (history) and the issuing CA's key id. A public key fingerprint
  belongs to one device only (checked at issuance: mistake M1, shared keys).
- ``identity_enrollment_tokens``: one-time bootstrap tokens, stored as SHA-256 only.
- ``identity_rotation_policies``: lifetime, renewal point and maximum key age per group.
- ``identity_device_keys``: per device, the current key, when it was first certified
  and when it was last rotated (the audit reads these for C5 and M4).
- ``identity_enroll_requests``: enrolments waiting for manual approval.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from fleetwarden.registry.models import Base, utcnow

#: the rows of the partial index ``ix_identity_certificates_revoked``; a query that
#: should use it must carry this condition as a literal (SQLite does not use a partial
#: index for a bound parameter)
REVOKED_SQL = "status = 'revoked'"


class IssuedCertificate(Base):
    __tablename__ = "identity_certificates"
    __table_args__ = (
        #: a device's active certificates (migration 0004); also serves by-device queries
        Index("ix_identity_certificates_device_status", "device_id", "status"),
        #: the revoked rows by expiry, for the CRL (migration 0005); written only at a
        #: revocation, not at every enrolment
        Index(
            "ix_identity_certificates_revoked",
            "not_after",
            sqlite_where=text(REVOKED_SQL),
            postgresql_where=text(REVOKED_SQL),
        ),
    )

    serial: Mapped[str] = mapped_column(String(64), primary_key=True)  # hex, lower case
    kind: Mapped[str] = mapped_column(String(16))  # device | server
    device_id: Mapped[str | None] = mapped_column(String(128))
    subject: Mapped[str] = mapped_column(String(512))
    #: not indexed: nothing looks a certificate up by it, and it cannot repeat (the DER
    #: it hashes contains the serial, the primary key); see migration 0005
    fingerprint_sha256: Mapped[str] = mapped_column(String(64))
    public_key_sha256: Mapped[str] = mapped_column(String(64), index=True)
    key_type: Mapped[str] = mapped_column(String(16))
    not_before: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    not_after: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: active | superseded | revoked
    status: Mapped[str] = mapped_column(String(16), default="active")
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    issued_via: Mapped[str] = mapped_column(String(32))
    replaces_serial: Mapped[str | None] = mapped_column(String(64))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revocation_reason: Mapped[str | None] = mapped_column(String(32))
    der: Mapped[bytes] = mapped_column(LargeBinary)
    #: hex SubjectKeyIdentifier of the issuing CA (which CRL lists it after a rollover);
    #: NULL for rows from before migration 0003, all issued by generation 1. Not indexed
    #: (migration 0005): the CRL query reaches the revoked rows through their own index,
    #: and only a retired CA's last expiry reads all of an issuer's rows.
    issuer_key_id: Mapped[str | None] = mapped_column(String(64))


class EnrollmentToken(Base):
    __tablename__ = "identity_enrollment_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    device_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("devices.id", ondelete="CASCADE"), index=True
    )
    #: SHA-256 of the secret; the secret is printed once and never stored
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class RotationPolicy(Base):
    __tablename__ = "identity_rotation_policies"

    group_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True
    )
    lifetime_days: Mapped[int] = mapped_column(Integer)
    renew_fraction: Mapped[float] = mapped_column(Float)
    max_key_age_days: Mapped[int] = mapped_column(Integer)
    allow_key_reuse: Mapped[bool] = mapped_column(Boolean, default=False)


class DeviceKey(Base):
    __tablename__ = "identity_device_keys"
    #: on SQLite, one B-tree keyed by device id instead of a rowid table plus an index
    #: on it: one tree to write per issued certificate (migration 0005)
    __table_args__ = {"sqlite_with_rowid": False}

    device_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    public_key_sha256: Mapped[str] = mapped_column(String(64))
    key_type: Mapped[str] = mapped_column(String(16))
    key_first_certified_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_rotation_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    rotations: Mapped[int] = mapped_column(Integer, default=0)
    current_serial: Mapped[str] = mapped_column(String(64))


class EnrollRequest(Base):
    __tablename__ = "identity_enroll_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("devices.id", ondelete="CASCADE"), index=True
    )
    public_key_sha256: Mapped[str] = mapped_column(String(64))
    #: pending | approved | rejected | issued
    status: Mapped[str] = mapped_column(String(16), default="pending")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    decided_by: Mapped[str | None] = mapped_column(String(128))
    note: Mapped[str | None] = mapped_column(Text)
