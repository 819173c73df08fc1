"""Issuance, enrolment authentication, tokens, revocation and the CRL (C1, C5, M1, M4).

Invariants:

- nothing is signed before the CSR's signature, the device's authentication, the key
  policy and the shared-key check (M1: one public key belongs to one device) pass;
- a certificate, the token it consumed, the superseded predecessor, the device's key
  record and the event describing it commit in ONE transaction; a single-use token is
  consumed by a conditional UPDATE so two concurrent uses cannot both succeed;
- every refusal records an OCSF Authentication event (status Failure) in its own
  transaction before the error propagates; no refusal writes anything else;
- revocation marks the rows and records a Device Config State Change event whose
  ``unmapped.changes.identity_event`` is ``certificate.revoked`` (the gateway acts on it,
  see :func:`revocation_of`); the CRL is regenerated from the registry, never edited.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes
from cryptography.x509.oid import NameOID
from sqlalchemy import String, Table, func, or_, select, text, true, update
from sqlalchemy import cast as cast_
from sqlalchemy.orm import Session

from fleetwarden.errors import NotFoundError, ValidationError
from fleetwarden.events import (
    Activity,
    Event,
    EventClass,
    Severity,
    authentication,
    device_config_change,
)
from fleetwarden.identity.bulk import RowInserter
from fleetwarden.identity.ca import (
    DEVICE_URI_PREFIX,
    REASONS,
    FleetCA,
    check_public_key,
    device_id_of,
    public_key_fingerprint,
    rollover_issuing,
    sha256_hex,
)
from fleetwarden.identity.errors import (
    EnrollmentAuthError,
    EnrollmentForbidden,
    EnrollmentRefused,
)
from fleetwarden.identity.models import (
    DeviceKey,
    EnrollmentToken,
    EnrollRequest,
    IssuedCertificate,
    RotationPolicy,
)
from fleetwarden.registry import Actor, Registry
from fleetwarden.registry.models import Device, Group, OutboxEvent, device_groups

ENROLL_TOKEN_PREFIX = "fwe_"  # noqa: S105 (a prefix, not a secret)
ISSUED = "certificate.issued"
REVOKED = "certificate.revoked"
REFUSED = "enrollment.refused"
ROLLOVER = "ca.rollover"


def aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


# -- how a device authenticated --------------------------------------------------------


@dataclass(frozen=True)
class TokenAuth:
    """HTTP Basic: user = device id, password = one-time enrolment token."""

    device_id: str
    secret: str


@dataclass(frozen=True)
class CertAuth:
    """A TLS client certificate already verified by the TLS layer (chain only; time,
    revocation and issuer role are checked here)."""

    cert: x509.Certificate


EnrollAuth = TokenAuth | CertAuth


@dataclass(frozen=True)
class Issued:
    device_id: str
    cert: x509.Certificate
    serial: str
    via: str


@dataclass(frozen=True)
class Pending:
    device_id: str
    request_id: int
    retry_after: int


@dataclass(frozen=True)
class Policy:
    lifetime: timedelta
    renew_fraction: float
    max_key_age: timedelta | None
    allow_key_reuse: bool


def parse_csr(der: bytes) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_der_x509_csr(der)
    except ValueError as exc:
        raise EnrollmentRefused("the body is not a DER PKCS#10 certificate request") from exc
    try:
        ok = csr.is_signature_valid
    except (ValueError, InvalidSignature, TypeError) as exc:
        raise EnrollmentRefused(f"the CSR signature cannot be checked: {exc}") from exc
    if not ok:
        raise EnrollmentRefused("the CSR signature is invalid (proof of possession failed)")
    return csr


def csr_device_id(csr: x509.CertificateSigningRequest) -> str:
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1:
        raise EnrollmentRefused("the CSR subject must carry exactly one CN (the device id)")
    cn = str(cns[0].value)
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return cn
    except ValueError as exc:
        raise EnrollmentRefused(f"the CSR extensions are malformed: {exc}") from exc
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(DEVICE_URI_PREFIX) and uri[len(DEVICE_URI_PREFIX) :] != cn:
            raise EnrollmentRefused("the CSR's SAN URI names a different device than its CN")
    return cn


class IdentityService:
    """The identity control's logic on top of the registry and the online CA."""

    def __init__(
        self,
        registry: Registry,
        ca: FleetCA,
        *,
        manufacturer_cas: list[x509.Certificate] | None = None,
    ) -> None:
        self.registry = registry
        self.ca = ca
        self.settings = ca.settings
        self.manufacturer_cas = list(manufacturer_cas or [])
        # SQLite has one writer at a time and issuance takes the write lock early
        # (claim_keys); threads of this process queue here instead of in SQLite's busy
        # handler, which sleeps in steps of milliseconds. Other processes still wait
        # on the database lock itself (busy_timeout).
        self._sqlite = registry.engine.dialect.name == "sqlite"
        self._issue_lock = threading.Lock()

    @contextmanager
    def _issuing(self) -> Iterator[None]:
        if not self._sqlite:
            yield
            return
        with self._issue_lock:
            yield

    # -- tokens --------------------------------------------------------------------------

    def create_token(self, device_id: str, actor: Actor, ttl: timedelta | None = None) -> str:
        """A one-time enrolment token bound to ``device_id``; returned once, stored hashed."""
        ttl = ttl or timedelta(hours=self.settings.token_ttl_hours)
        secret = ENROLL_TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        with self.registry.session() as s:
            if s.get(Device, device_id) is None:
                raise NotFoundError(f"device {device_id!r} not found")
            s.add(
                EnrollmentToken(
                    id=secrets.token_hex(8),
                    device_id=device_id,
                    secret_hash=sha256_hex(secret.encode()),
                    created_at=now,
                    expires_at=now + ttl,
                )
            )
            self.registry.record(
                s,
                device_config_change(
                    device_uid=device_id,
                    actor=actor.name,
                    message=f"enrolment token created for {device_id}",
                    changes={
                        "identity_event": "token.created",
                        "expires_at": (now + ttl).isoformat(),
                    },
                ),
            )
        return secret

    # -- enrolment -----------------------------------------------------------------------

    def refuse(
        self, exc: Exception, *, device_id: str | None, src_ip: str | None, operation: str
    ) -> None:
        """Record a refusal (own transaction)."""
        with self.registry.session() as s:
            self.registry.record(
                s,
                authentication(
                    device_uid=device_id,
                    src_ip=src_ip,
                    success=False,
                    message=f"{operation} refused: {exc}",
                    protocol="EST",
                    extra={"unmapped": {"identity_event": REFUSED, "reason": str(exc)}},
                ),
            )

    def enroll(
        self,
        csr_der: bytes,
        auth: EnrollAuth | None,
        *,
        reenroll: bool = False,
        src_ip: str | None = None,
    ) -> Issued | Pending:
        """Check, sign and record; every refusal is recorded before it is raised."""
        operation = "simplereenroll" if reenroll else "simpleenroll"
        claimed = auth.device_id if isinstance(auth, TokenAuth) else None
        try:
            csr = parse_csr(csr_der)
            device_id = csr_device_id(csr)
            claimed = device_id
            return self._enroll(csr, device_id, auth, reenroll=reenroll, src_ip=src_ip)
        except (EnrollmentRefused, EnrollmentAuthError, NotFoundError) as exc:
            self.refuse(exc, device_id=claimed, src_ip=src_ip, operation=operation)
            raise

    def device_of(self, cert: x509.Certificate, now: datetime | None = None) -> str:
        """The device a presented client certificate proves, for device-facing APIs
        (hawkBit DDI, ...): the certificate must be time-valid, issued by the fleet CA,
        recorded as that device's certificate, not revoked, and the device active.
        The TLS layer deliberately lets expired and revoked certificates through so
        that this check can refuse them with a reason; raise otherwise."""
        now = now or datetime.now(UTC)
        if not (cert.not_valid_before_utc <= now < cert.not_valid_after_utc):
            raise EnrollmentAuthError("the client certificate is expired or not yet valid")
        if not self._from_fleet_ca(cert):
            raise EnrollmentAuthError("the client certificate is not from the fleet CA")
        serial = format(cert.serial_number, "x")
        with self.registry.session() as s:
            row = s.get(IssuedCertificate, serial)
            if row is None or row.kind != "device" or row.device_id is None:
                raise EnrollmentAuthError(
                    "the client certificate is not a known device certificate"
                )
            if row.status == "revoked":
                raise EnrollmentAuthError("the client certificate is revoked")
            device = s.get(Device, row.device_id)
            if device is None or device.status != "active":
                raise EnrollmentAuthError(f"device {row.device_id!r} is not active")
            if device_id_of(cert) != row.device_id:
                raise EnrollmentAuthError("the certificate names another device than recorded")
            return row.device_id

    def _policy(self, s: Session, device_id: str) -> Policy:
        rows = s.scalars(
            select(RotationPolicy)
            .join(device_groups, device_groups.c.group_id == RotationPolicy.group_id)
            .where(device_groups.c.device_id == device_id)
        ).all()
        cfg = self.settings
        if not rows:
            return Policy(timedelta(days=cfg.device_lifetime_days), cfg.renew_fraction, None, False)
        # A device in several groups gets the strictest of their policies.
        return Policy(
            lifetime=timedelta(days=min(r.lifetime_days for r in rows)),
            renew_fraction=min(r.renew_fraction for r in rows),
            max_key_age=timedelta(days=min(r.max_key_age_days for r in rows)),
            allow_key_reuse=all(r.allow_key_reuse for r in rows),
        )

    def _authenticate(
        self, s: Session, device_id: str, auth: EnrollAuth | None, now: datetime, reenroll: bool
    ) -> tuple[str, EnrollmentToken | None, IssuedCertificate | None]:
        """(via, token row to consume, current certificate row)."""
        if auth is None:
            raise EnrollmentAuthError(
                "no credentials: send HTTP Basic (device id + enrolment token) "
                "or a client certificate"
            )
        if isinstance(auth, TokenAuth):
            if reenroll:
                raise EnrollmentAuthError("re-enrolment needs the current client certificate")
            if auth.device_id != device_id:
                raise EnrollmentForbidden(
                    f"the CSR names device {device_id!r} but the token user is {auth.device_id!r}"
                )
            tok = s.scalars(
                select(EnrollmentToken).where(
                    EnrollmentToken.secret_hash == sha256_hex(auth.secret.encode())
                )
            ).first()
            if tok is None or not hmac.compare_digest(tok.device_id, device_id):
                raise EnrollmentAuthError("unknown enrolment token for this device")
            if tok.used_at is not None:
                raise EnrollmentAuthError("enrolment token already used (replay refused)")
            if aware(tok.expires_at) <= now:
                raise EnrollmentAuthError("enrolment token expired")
            return "est-token", tok, None
        cert = auth.cert
        if not (cert.not_valid_before_utc <= now < cert.not_valid_after_utc):
            raise EnrollmentAuthError("the client certificate is expired or not yet valid")
        presented = device_id_of(cert)
        if self._from_fleet_ca(cert):
            serial = format(cert.serial_number, "x")
            row = s.get(IssuedCertificate, serial)
            if row is None or row.kind != "device":
                raise EnrollmentAuthError(
                    "the client certificate is not a known device certificate"
                )
            if row.status == "revoked":
                raise EnrollmentAuthError("the client certificate is revoked")
            if row.device_id != device_id or presented != device_id:
                raise EnrollmentForbidden(
                    f"the CSR names device {device_id!r} but the certificate is {row.device_id!r}'s"
                )
            return "est-reenroll", None, row
        if reenroll:
            raise EnrollmentAuthError("re-enrolment needs a certificate from the fleet CA")
        if any(_issued_by(cert, m) for m in self.manufacturer_cas):
            if presented != device_id:
                raise EnrollmentForbidden(
                    f"the CSR names device {device_id!r} but the factory "
                    f"certificate is {presented!r}'s"
                )
            return "est-factory", None, None
        raise EnrollmentAuthError(
            "the client certificate is not from the fleet or a manufacturer CA"
        )

    def _enroll(
        self,
        csr: x509.CertificateSigningRequest,
        device_id: str,
        auth: EnrollAuth | None,
        *,
        reenroll: bool,
        src_ip: str | None,
    ) -> Issued | Pending:
        now = datetime.now(UTC)
        pub = cast(CertificateIssuerPublicKeyTypes, csr.public_key())
        # One transaction: checks, signing (well under a millisecond) and the writes, so
        # a refusal anywhere rolls everything back and a success commits it all at once.
        with self._issuing(), self.registry.session() as s:
            status = s.scalar(select(Device.status).where(Device.id == device_id))
            if status is None:
                raise NotFoundError(f"device {device_id!r} is not in the registry")
            via, token, current = self._authenticate(s, device_id, auth, now, reenroll)
            if status != "active":
                raise EnrollmentForbidden(f"device {device_id!r} is {status}, not active")
            key_type = check_public_key(pub, self.settings)
            fp = public_key_fingerprint(pub)
            policy = self._policy(s, device_id)
            claim_keys(s, [fp])
            owners = set(
                s.scalars(
                    select(IssuedCertificate.device_id).where(
                        IssuedCertificate.public_key_sha256 == fp
                    )
                )
            )
            if owners - {device_id}:
                raise EnrollmentForbidden(
                    "this public key is already certified for another device (shared keys refused)"
                )
            if (
                owners
                and via == "est-reenroll"
                and self.settings.require_fresh_key
                and not policy.allow_key_reuse
            ):
                raise EnrollmentRefused(
                    "re-enrolment requires a fresh key (this key was certified before)"
                )
            if owners and policy.max_key_age is not None:
                # Key reuse allowed by policy, but never past the group's maximum key age.
                k = s.get(DeviceKey, device_id)
                if (
                    k is not None
                    and k.public_key_sha256 == fp
                    and aware(k.key_first_certified_at) + policy.max_key_age <= now
                ):
                    raise EnrollmentRefused(
                        "this key is older than the group's maximum key age; use a fresh key"
                    )
            if self.settings.manual_approval and via != "est-reenroll":
                pending = self._approval(s, device_id, fp)
                if pending is not None:
                    return pending
            cert = self.ca.issue_device(device_id, pub, lifetime=policy.lifetime, now=now)
            serial = format(cert.serial_number, "x")
            if token is not None:
                used = s.execute(
                    update(EnrollmentToken)
                    .where(EnrollmentToken.id == token.id, EnrollmentToken.used_at.is_(None))
                    .values(used_at=now)
                )
                if used.rowcount != 1:  # type: ignore[attr-defined]
                    raise EnrollmentAuthError("enrolment token already used (replay refused)")
            self._store(s, cert, device_id, fp, key_type, via, now, current)
            if self.settings.manual_approval and via != "est-reenroll":
                s.execute(
                    update(EnrollRequest)
                    .where(
                        EnrollRequest.device_id == device_id,
                        EnrollRequest.public_key_sha256 == fp,
                        EnrollRequest.status == "approved",
                    )
                    .values(status="issued")
                )
        return Issued(device_id, cert, serial, via)

    def _approval(self, s: Session, device_id: str, fp: str) -> Pending | None:
        req = s.scalars(
            select(EnrollRequest)
            .where(EnrollRequest.device_id == device_id, EnrollRequest.public_key_sha256 == fp)
            .order_by(EnrollRequest.id.desc())
        ).first()
        if req is not None and req.status == "approved":
            return None
        if req is not None and req.status == "rejected":
            raise EnrollmentForbidden("this enrolment request was rejected by an operator")
        if req is None or req.status == "issued":
            req = EnrollRequest(device_id=device_id, public_key_sha256=fp, status="pending")
            s.add(req)
            s.flush()
            self.registry.record(
                s,
                device_config_change(
                    device_uid=device_id,
                    message=f"enrolment of {device_id} waits for approval (request {req.id})",
                    changes={"identity_event": "enrollment.pending", "request_id": req.id},
                ),
            )
        return Pending(device_id, req.id, self.settings.retry_after_seconds)

    def _store(
        self,
        s: Session,
        cert: x509.Certificate,
        device_id: str | None,
        fp: str,
        key_type: str,
        via: str,
        now: datetime,
        current: IssuedCertificate | None,
        kind: str = "device",
        actor: str | None = None,
    ) -> None:
        """Rows for one issued certificate, written in the caller's transaction."""
        # no_autoflush: the look-ups below need no pending rows of this transaction.
        with s.no_autoflush:
            rows = NewRows()
            history = None
            key = None
            if device_id is not None and kind == "device":
                # Filter by device only (few rows each) and the rest in Python: with a
                # status condition SQLite may pick the low-selectivity status index.
                history = list(
                    s.scalars(
                        select(IssuedCertificate).where(IssuedCertificate.device_id == device_id)
                    )
                )
                key = s.get(DeviceKey, device_id)
            self._store_rows(
                rows, cert, device_id, fp, key_type, via, now, current, kind, actor, history, key
            )
            rows.insert(s)

    def _store_rows(
        self,
        rows: NewRows,
        cert: x509.Certificate,
        device_id: str | None,
        fp: str,
        key_type: str,
        via: str,
        now: datetime,
        current: IssuedCertificate | None,
        kind: str,
        actor: str | None,
        history: list[IssuedCertificate] | None,
        key: DeviceKey | None,
    ) -> None:
        """Collect the new rows for one issued certificate in ``rows`` (one multi-row
        INSERT per table later, see :class:`NewRows`); updates of existing rows (the
        superseded predecessor, the device's key record) go through the ORM and are
        flushed with the same transaction."""
        der = cert.public_bytes(serialization.Encoding.DER)
        cert_fp = sha256_hex(der)
        serial = format(cert.serial_number, "x")
        not_after = cert.not_valid_after_utc
        prev_serial = None
        if history is not None:
            prev = [r for r in history if r.status == "active" and r.kind == "device"]
            for p in prev:
                p.status = "superseded"
            prev_serial = (
                current.serial if current is not None else (prev[-1].serial if prev else None)
            )
        rows.certs.append(
            (
                serial,
                kind,
                device_id,
                subject_string(cert, device_id if kind == "device" else None),
                cert_fp,
                fp,
                key_type,
                cert.not_valid_before_utc,
                not_after,
                "active",
                now,
                via,
                prev_serial,
                der,
                self.ca.key_id,
            )
        )
        if device_id is None or kind != "device":
            return
        if key is None:
            rows.keys.append((device_id, fp, key_type, now, None, 0, serial))
        else:
            if key.public_key_sha256 != fp:
                key.public_key_sha256 = fp
                key.key_type = key_type
                key.key_first_certified_at = now
                key.last_rotation_at = now
                key.rotations += 1
            key.current_serial = serial
        event = device_config_change(
            device_uid=device_id,
            actor=actor or f"device:{device_id}",
            message=f"certificate {serial} issued to {device_id} via {via}",
            changes={
                "identity_event": ISSUED,
                "certificate": {
                    "serial": serial,
                    "fingerprint_sha256": cert_fp,
                    "public_key_sha256": fp,
                    "not_after": not_after.isoformat(),
                    "via": via,
                    "replaces": prev_serial,
                },
            },
        )
        rows.events.append((now, event.to_ocsf(), None))

    def provision(
        self, csrs: list[bytes], actor: Actor, *, via: str = "provision"
    ) -> list[Issued | EnrollmentRefused]:
        """Factory-line provisioning: issue certificates for many CSRs at once (the
        operator is the authority, so no per-device token). Same checks as EST (CSR
        signature, registered active device, key policy, shared-key M1 check, also
        within the batch), set-based look-ups and one transaction for the batch, which
        holds the key claim (:func:`claim_keys`) from the M1 look-up to the commit.
        Returns, per CSR in order, the issued certificate or the refusal."""
        now = datetime.now(UTC)
        parsed: list[tuple[int, str, CertificateIssuerPublicKeyTypes, str, str]] = []
        out: list[Issued | EnrollmentRefused | None] = [None] * len(csrs)
        settings = self.settings
        for i, der in enumerate(csrs):
            try:
                csr = parse_csr(der)
                did = csr_device_id(csr)
                pub = cast(CertificateIssuerPublicKeyTypes, csr.public_key())
                kt = check_public_key(pub, settings)
                parsed.append((i, did, pub, kt, public_key_fingerprint(pub)))
            except EnrollmentRefused as exc:
                out[i] = exc
        with self._issuing(), self.registry.session() as s, s.no_autoflush:
            ids = list({p[1] for p in parsed})
            fps = [p[4] for p in parsed]
            claim_keys(s, fps)
            active = set(
                s.scalars(select(Device.id).where(Device.id.in_(ids), Device.status == "active"))
            )
            owners: dict[str, set[str]] = {}
            for fp, dev in s.execute(
                select(IssuedCertificate.public_key_sha256, IssuedCertificate.device_id).where(
                    IssuedCertificate.public_key_sha256.in_(fps)
                )
            ):
                owners.setdefault(fp, set()).add(str(dev))
            history: dict[str, list[IssuedCertificate]] = {d: [] for d in ids}
            for row in s.scalars(
                select(IssuedCertificate).where(IssuedCertificate.device_id.in_(ids))
            ):
                history[str(row.device_id)].append(row)
            keys = {
                k.device_id: k
                for k in s.scalars(select(DeviceKey).where(DeviceKey.device_id.in_(ids)))
            }
            seen: set[str] = set()
            rows = NewRows()
            for i, did, pub, kt, fp in parsed:
                if did not in active:
                    out[i] = EnrollmentForbidden(f"device {did!r} is not registered and active")
                    continue
                if (owners.get(fp, set()) - {did}) or fp in seen or did in seen:
                    out[i] = EnrollmentForbidden(
                        "public key shared with another device, or device twice in the batch"
                    )
                    continue
                seen.add(fp)
                seen.add(did)
                cert = self.ca.issue_device(did, pub, now=now)
                self._store_rows(
                    rows,
                    cert,
                    did,
                    fp,
                    kt,
                    via,
                    now,
                    None,
                    "device",
                    actor.name,
                    history[did],
                    keys.get(did),
                )
                out[i] = Issued(did, cert, format(cert.serial_number, "x"), via)
            for i, result in enumerate(out):
                if isinstance(result, EnrollmentRefused):
                    event = authentication(
                        device_uid=None,
                        src_ip=actor.src_ip,
                        success=False,
                        message=f"provisioning of CSR #{i} refused: {result}",
                        protocol="provision",
                        extra={"unmapped": {"identity_event": REFUSED, "reason": str(result)}},
                    )
                    rows.events.append((now, event.to_ocsf(), None))
            rows.insert(s)
        return [r for r in out if r is not None]

    def record_server_certificate(self, cert: x509.Certificate, actor: Actor) -> None:
        """Keep platform TLS certificates in the registry too (they are fleet CA output)."""
        with self.registry.session() as s:
            self._store(
                s,
                cert,
                None,
                public_key_fingerprint(cert.public_key()),
                check_public_key(
                    cert.public_key(), self.settings, ["ec-p256", "ec-p384", "ed25519", "rsa"]
                ),
                "server-profile",
                datetime.now(UTC),
                None,
                kind="server",
                actor=actor.name,
            )

    # -- manual approval -------------------------------------------------------------------

    def decide(self, request_id: int, approve: bool, actor: Actor) -> str:
        with self.registry.session() as s:
            req = s.get(EnrollRequest, request_id)
            if req is None:
                raise NotFoundError(f"enrolment request {request_id} not found")
            if req.status != "pending":
                raise ValidationError(f"enrolment request {request_id} is {req.status}")
            req.status = "approved" if approve else "rejected"
            req.decided_at = datetime.now(UTC)
            req.decided_by = actor.name
            self.registry.record(
                s,
                device_config_change(
                    device_uid=req.device_id,
                    actor=actor.name,
                    message=f"enrolment request {request_id} {req.status}",
                    changes={
                        "identity_event": f"enrollment.{req.status}",
                        "request_id": request_id,
                    },
                ),
            )
            return req.device_id

    def pending_requests(self) -> list[dict[str, Any]]:
        with self.registry.session() as s:
            return [
                {
                    "id": r.id,
                    "device_id": r.device_id,
                    "created_at": aware(r.created_at).isoformat(),
                }
                for r in s.scalars(select(EnrollRequest).where(EnrollRequest.status == "pending"))
            ]

    # -- revocation and CRL --------------------------------------------------------------

    def revoke(
        self, device_id: str, reason: str, actor: Actor, *, serial: str | None = None
    ) -> list[str]:
        """Revoke the device's unexpired certificates (or one of them); return serials."""
        if reason not in REASONS:
            raise ValidationError(f"unknown reason {reason!r}; one of: {', '.join(REASONS)}")
        now = datetime.now(UTC)
        with self.registry.session() as s:
            q = select(IssuedCertificate).where(
                IssuedCertificate.device_id == device_id,
                IssuedCertificate.kind == "device",
                IssuedCertificate.status != "revoked",
            )
            if serial is not None:
                q = q.where(IssuedCertificate.serial == serial.lower().lstrip("0"))
            rows = [r for r in s.scalars(q) if aware(r.not_after) > now]
            if not rows:
                raise NotFoundError(f"no unrevoked, unexpired certificate of {device_id!r}")
            for r in rows:
                r.status = "revoked"
                r.revoked_at = now
                r.revocation_reason = reason
            serials = [r.serial for r in rows]
            ev = device_config_change(
                device_uid=device_id,
                actor=actor.name,
                message=f"certificate(s) of {device_id} revoked ({reason}): {', '.join(serials)}",
                changes={
                    "identity_event": REVOKED,
                    "serials": serials,
                    "fingerprints_sha256": [r.fingerprint_sha256 for r in rows],
                    "reason": reason,
                },
            )
            self.registry.record(
                s,
                Event(
                    class_uid=ev.class_uid,
                    activity_id=ev.activity_id,
                    message=ev.message,
                    severity_id=Severity.MEDIUM,
                    actor=ev.actor,
                    device_uid=ev.device_uid,
                    src_ip=actor.src_ip,
                    data=ev.data,
                ),
            )
        return serials

    def _from_fleet_ca(self, cert: x509.Certificate) -> bool:
        """Issued by the current or a retired (still accepted) issuing CA."""
        return any(_issued_by(cert, ca.cert) for ca in self.ca.issuers)

    @staticmethod
    def _issuer_filter(issuer: FleetCA) -> Any:
        cond = IssuedCertificate.issuer_key_id == issuer.key_id
        if issuer.generation == 1:  # rows from before the issuer column: generation 1
            cond = or_(cond, IssuedCertificate.issuer_key_id.is_(None))
        return cond

    def revoked_entries(
        self, issuer: FleetCA | None = None
    ) -> Iterator[tuple[int, datetime, str | None]]:
        """Revoked, unexpired certificates: what the CRL must list (of ``issuer`` only,
        when given)."""
        now = datetime.now(UTC)
        sqlite = self.registry.engine.dialect.name == "sqlite"
        # On SQLite, SQLAlchemy parses stored datetimes with a regex per value, which
        # dominates for 100k rows; read the text and use the C fromisoformat instead.
        when_col: Any = (
            cast_(IssuedCertificate.revoked_at, String) if sqlite else IssuedCertificate.revoked_at
        )
        # Core connection, not the ORM session: no ORM row loading for 100k rows.
        with self.registry.engine.connect() as conn:
            rows = conn.execute(
                select(IssuedCertificate.serial, when_col, IssuedCertificate.revocation_reason)
                .where(IssuedCertificate.status == "revoked", IssuedCertificate.not_after > now)
                .where(self._issuer_filter(issuer) if issuer is not None else true())
            ).all()
        # Naive datetimes are UTC everywhere in the registry, and cryptography reads naive
        # datetimes as UTC, so no per-row tz conversion is needed.
        for serial, when, reason in rows:
            if isinstance(when, str):
                when = datetime.fromisoformat(when)
            yield int(serial, 16), when if when is not None else now, reason

    def regenerate_crl(self) -> x509.CertificateRevocationList:
        """Publish a fresh CRL for every accepted issuing CA (the current one and the
        retired ones whose certificates are still valid) and rewrite ``chain.pem`` and
        the CRL bundle when they change; returns the current issuing CA's CRL."""
        self.prune_retired()
        crl = None
        several = len(self.ca.issuers) > 1
        for issuer in self.ca.issuers:
            # With one issuing CA every revoked row is its own (no filter: the fast path).
            c = issuer.build_crl(list(self.revoked_entries(issuer if several else None)))
            issuer.write_crl(c)
            if issuer is self.ca:
                crl = c
        self.ca.write_trust_files()
        assert crl is not None
        return crl

    def last_expiry(self, issuer: FleetCA) -> datetime | None:
        """When the last certificate ``issuer`` issued expires (None: it issued none)."""
        with self.registry.session() as s:
            last = s.scalar(
                select(func.max(IssuedCertificate.not_after)).where(self._issuer_filter(issuer))
            )
        return aware(last) if last is not None else None

    def prune_retired(self, now: datetime | None = None) -> list[FleetCA]:
        """Stop accepting retired issuing CAs whose last certificate has expired (they
        leave ``chain.pem``, ``cacerts`` and the CRL bundle; their files stay in
        ``retired/``). Returns the ones dropped."""
        now = now or datetime.now(UTC)
        dropped = []
        for r in list(self.ca.retired):
            last = self.last_expiry(r)
            if last is None or last <= now:
                self.ca.retired.remove(r)
                dropped.append(r)
        return dropped

    def rollover(
        self,
        actor: Actor,
        *,
        root_dir: Path | None = None,
        lifetime: timedelta | None = None,
    ) -> dict[str, Any]:
        """``fleetwarden ca rollover``: a new issuing CA from the root; the old one is
        retired but kept (trusted, publishing its CRL) until its last certificate
        expires. Records a ``ca.rollover`` event (the running service reloads on it)."""
        result = rollover_issuing(self.ca, root_dir=root_dir, lifetime=lifetime)
        self.ca = result.new
        self.regenerate_crl()
        old = result.retired
        kept_until = self.last_expiry(old) if old in self.ca.retired else None
        pem = serialization.Encoding.PEM
        summary: dict[str, Any] = {
            "generation": result.new.generation,
            "issuing": {
                "subject": result.new.cert.subject.rfc4514_string(),
                "serial": format(result.new.cert.serial_number, "x"),
                "key_id": result.new.key_id,
                "not_after": result.new.cert.not_valid_after_utc.isoformat(),
                "crl_url": result.new.crl_url,
                "cert": str(self.ca.paths.issuing_cert),
            },
            "retired": {
                "generation": old.generation,
                "subject": old.cert.subject.rfc4514_string(),
                "serial": format(old.cert.serial_number, "x"),
                "key_id": old.key_id,
                "not_after": old.cert.not_valid_after_utc.isoformat(),
                "crl_url": old.crl_url,
                "cert": str(self.ca.paths.retired_cert(old.generation)),
                "trusted_until": kept_until.isoformat() if kept_until else None,
            },
            "accepted_issuers": [c.cert.subject.rfc4514_string() for c in self.ca.issuers],
            "chain": str(self.ca.paths.chain),
            "crl_bundle": str(self.ca.paths.crl_bundle),
            "key_backend": self.settings.key_backend,
        }
        with self.registry.session() as s:
            self.registry.record(
                s,
                Event(
                    class_uid=EventClass.DEVICE_CONFIG_STATE_CHANGE,
                    activity_id=int(Activity.UPDATE),
                    message=(
                        f"fleet CA rollover: issuing CA {result.new.generation} "
                        f"({summary['issuing']['subject']}) replaces {old.generation}"
                    ),
                    severity_id=Severity.MEDIUM,
                    actor=actor.name,
                    device_uid=f"ca:{self.settings.ca_name}",
                    src_ip=actor.src_ip,
                    data={
                        "unmapped": {
                            "changes": {
                                "identity_event": ROLLOVER,
                                **{k: summary[k] for k in ("generation", "issuing", "retired")},
                                "issuing_pem": result.new.cert.public_bytes(pem).decode(),
                            }
                        }
                    },
                ),
            )
        return summary

    # -- status ----------------------------------------------------------------------------

    def certificates(self, device_id: str) -> list[dict[str, Any]]:
        with self.registry.session() as s:
            rows = s.scalars(
                select(IssuedCertificate)
                .where(IssuedCertificate.device_id == device_id)
                .order_by(IssuedCertificate.issued_at)
            ).all()
            return [
                {
                    "serial": r.serial,
                    "status": r.status,
                    "not_before": aware(r.not_before).isoformat(),
                    "not_after": aware(r.not_after).isoformat(),
                    "fingerprint_sha256": r.fingerprint_sha256,
                    "public_key_sha256": r.public_key_sha256,
                    "key_type": r.key_type,
                    "issued_via": r.issued_via,
                    "replaces": r.replaces_serial,
                    "revoked_at": aware(r.revoked_at).isoformat() if r.revoked_at else None,
                    "revocation_reason": r.revocation_reason,
                }
                for r in rows
            ]

    def key_state(self, device_id: str) -> dict[str, Any] | None:
        with self.registry.session() as s:
            k = s.get(DeviceKey, device_id)
            if k is None:
                return None
            return {
                "public_key_sha256": k.public_key_sha256,
                "key_type": k.key_type,
                "key_first_certified_at": aware(k.key_first_certified_at).isoformat(),
                "last_rotation_at": aware(k.last_rotation_at).isoformat()
                if k.last_rotation_at
                else None,
                "rotations": k.rotations,
                "current_serial": k.current_serial,
            }

    def set_policy(
        self,
        group: str,
        *,
        lifetime_days: int,
        renew_fraction: float,
        max_key_age_days: int,
        allow_key_reuse: bool,
        actor: Actor,
    ) -> None:
        if not (1 <= lifetime_days <= 3650 and 0.1 < renew_fraction < 1 and max_key_age_days >= 1):
            raise ValidationError(
                "lifetime_days 1..3650, renew_fraction in (0.1, 1), max_key_age_days >= 1"
            )
        with self.registry.session() as s:
            g = s.scalars(select(Group).where(Group.name == group)).first()
            if g is None:
                raise NotFoundError(f"group {group!r} not found")
            row = s.get(RotationPolicy, g.id) or RotationPolicy(group_id=g.id)
            row.lifetime_days = lifetime_days
            row.renew_fraction = renew_fraction
            row.max_key_age_days = max_key_age_days
            row.allow_key_reuse = allow_key_reuse
            s.add(row)
            self.registry.record(
                s,
                device_config_change(
                    device_uid=f"group:{group}",
                    actor=actor.name,
                    message=f"rotation policy of group {group} set",
                    changes={
                        "identity_event": "rotation_policy.set",
                        "lifetime_days": lifetime_days,
                        "renew_fraction": renew_fraction,
                        "max_key_age_days": max_key_age_days,
                        "allow_key_reuse": allow_key_reuse,
                    },
                ),
            )


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def revocation_of(event: Event) -> tuple[str, list[str], list[str]] | None:
    """For consumers (gateway): (device id, serials, cert fingerprints) if ``event`` is a
    certificate revocation, else None."""
    changes = event.data.get("unmapped", {}).get("changes", {})
    if not isinstance(changes, dict) or changes.get("identity_event") != REVOKED:
        return None
    return (
        str(event.device_uid),
        [str(x) for x in changes.get("serials", [])],
        [str(x) for x in changes.get("fingerprints_sha256", [])],
    )


def rollover_of(event: Event) -> dict[str, Any] | None:
    """For consumers (identity in ``up``, gateway): the changes of a ``ca.rollover``
    event, else None."""
    changes = event.data.get("unmapped", {}).get("changes", {})
    if not isinstance(changes, dict) or changes.get("identity_event") != ROLLOVER:
        return None
    return changes


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


_CERT_ROWS = RowInserter(
    cast(Table, IssuedCertificate.__table__),
    (
        "serial",
        "kind",
        "device_id",
        "subject",
        "fingerprint_sha256",
        "public_key_sha256",
        "key_type",
        "not_before",
        "not_after",
        "status",
        "issued_at",
        "issued_via",
        "replaces_serial",
        "der",
        "issuer_key_id",
    ),
)
_KEY_ROWS = RowInserter(
    cast(Table, DeviceKey.__table__),
    (
        "device_id",
        "public_key_sha256",
        "key_type",
        "key_first_certified_at",
        "last_rotation_at",
        "rotations",
        "current_serial",
    ),
)
_EVENT_ROWS = RowInserter(
    cast(Table, OutboxEvent.__table__), ("created_at", "payload", "relayed_at")
)


@dataclass
class NewRows:
    """New certificate, device-key and outbox rows of one transaction, as tuples in the
    column order of the inserters above; :meth:`insert` writes each table with one
    multi-row INSERT (see :mod:`fleetwarden.identity.bulk`) in the session's transaction."""

    certs: list[tuple[Any, ...]] = field(default_factory=list)
    keys: list[tuple[Any, ...]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)

    def insert(self, s: Session) -> None:
        conn = s.connection()
        _CERT_ROWS.execute(conn, self.certs)
        _KEY_ROWS.execute(conn, self.keys)
        _EVENT_ROWS.execute(conn, self.events)


#: device ids whose RFC 4514 form is ``CN=<id>`` unchanged (nothing to escape)
_PLAIN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/=-]{0,500}")


def subject_string(cert: x509.Certificate, device_id: str | None) -> str:
    """The certificate subject as RFC 4514 text (at most 512 characters). A device
    certificate's subject is exactly ``CN=<device id>`` (see ``FleetCA.device_builder``),
    so for ids that need no escaping the text is built without parsing the name."""
    if device_id is not None and _PLAIN_ID.fullmatch(device_id):
        return ("CN=" + device_id)[:512]
    return cert.subject.rfc4514_string()[:512]


def claim_keys(s: Session, fingerprints: list[str]) -> None:
    """Serialise the M1 shared-key check against every other writer (threads, worker
    processes, the CLI): call before looking up who owns ``fingerprints``; the claim
    lasts until the transaction ends, so the look-up and the insert of the new
    certificate row are atomic with respect to any other issuance.

    - SQLite: ``BEGIN IMMEDIATE`` takes the database write lock now (pysqlite would
      only begin at the first write, after the look-up); other writers wait
      (``busy_timeout``);
    - PostgreSQL: one transaction-scoped advisory lock per fingerprint (sorted, so two
      batches cannot deadlock); issuances of other keys proceed in parallel.
    """
    conn = s.connection()
    if conn.dialect.name == "sqlite":
        dbapi = conn.connection.dbapi_connection
        if dbapi is not None and not dbapi.in_transaction:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        return
    if conn.dialect.name == "postgresql":
        keys = sorted({_lock_key(fp) for fp in fingerprints})
        conn.execute(
            text(
                "SELECT pg_advisory_xact_lock(k) FROM "
                "(SELECT unnest(CAST(:keys AS bigint[])) AS k ORDER BY 1) AS sorted_keys"
            ),
            {"keys": keys},
        )
        return
    raise ValidationError(f"no key claim for database {conn.dialect.name!r}")  # pragma: no cover


def _lock_key(fingerprint: str) -> int:
    """A signed 64-bit advisory lock key from a hex SHA-256 fingerprint."""
    return int.from_bytes(bytes.fromhex(fingerprint[:16]), "big", signed=True)
