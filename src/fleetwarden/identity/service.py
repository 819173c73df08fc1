"""Issuance, enrolment authentication, tokens, revocation and the CRL (C1, C5, M1, M4).

Invariants:

- nothing is signed before the CSR's signature, the device's authentication, the key
  policy and the shared-key check (M1: one public key belongs to one device) pass;
- a certificate, the token it consumed, the superseded predecessor, the device's key
  record and the event describing it commit in ONE transaction (that of the request's
  round in :meth:`IdentityService.enroll_many`, the EST group commit); a single-use
  token is consumed by a conditional UPDATE so two concurrent uses cannot both succeed;
- every refusal records an OCSF Authentication event (status Failure), committed before
  the refusal is answered; no refusal writes anything else;
- revocation marks the rows and records a Device Config State Change event whose
  ``unmapped.changes.identity_event`` is ``certificate.revoked`` (the gateway acts on it,
  see :func:`revocation_of`); the CRL is regenerated from the registry, never edited.
"""

from __future__ import annotations

import functools
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

import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from sqlalchemy import (
    String,
    Table,
    any_,
    bindparam,
    func,
    literal_column,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy import cast as cast_
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from fleetwarden.errors import NotFoundError, ValidationError
from fleetwarden.events import (
    Activity,
    Event,
    EventClass,
    Severity,
    authentication,
    device_config_change,
    device_config_change_record,
)
from fleetwarden.identity.bulk import RowInserter
from fleetwarden.identity.ca import (
    REASONS,
    FleetCA,
    KeyIds,
    check_public_key,
    device_id_of,
    public_key_fingerprint,
    rollover_issuing,
    sha256_hex,
)
from fleetwarden.identity.csr import read_csr
from fleetwarden.identity.errors import (
    EnrollmentAuthError,
    EnrollmentForbidden,
    EnrollmentRefused,
)
from fleetwarden.identity.models import (
    REVOKED_SQL,
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
#: client certificates whose issuing CA is remembered (see ``_from_fleet_ca``)
_ISSUER_CACHE_SIZE = 8192


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
class OperatorAuth:
    """Provisioning by an operator (``fleetwarden ca provision``): the operator's
    authority stands in for the device's credentials; no approval step."""

    actor: Actor
    via: str = "provision"


@dataclass(frozen=True, slots=True)
class EnrollmentRequest:
    """One CSR to certify and how its sender authenticated."""

    csr_der: bytes
    auth: EnrollAuth | OperatorAuth | None
    reenroll: bool = False
    src_ip: str | None = None

    @property
    def operation(self) -> str:
        if isinstance(self.auth, OperatorAuth):
            return "provision"
        return "simplereenroll" if self.reenroll else "simpleenroll"


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class Policy:
    lifetime: timedelta
    renew_fraction: float
    max_key_age: timedelta | None
    allow_key_reuse: bool


#: per request of :meth:`IdentityService.enroll_many`: the certificate, the pending
#: approval, the refusal (EnrollmentRefused, EnrollmentAuthError, NotFoundError), or
#: with ``isolate`` the unexpected error of its own transaction
EnrollResult = Issued | Pending | Exception


@dataclass(slots=True)
class _Item:
    """One request on its way through :meth:`IdentityService.enroll_many`."""

    index: int
    req: EnrollmentRequest
    claimed: str | None  # the device id the refusal event names
    device_id: str = ""
    pub: Any = None
    key_ids: KeyIds | None = None  # of pub
    key_type: str | None = None  # of pub, when read from its encoding
    via: str = ""
    token_hash: str | None = None
    serial: str | None = None  # of the presented fleet certificate (re-enrolment)
    auth_error: Exception | None = None  # a credential check that needed no look-up
    refusal: Exception | None = None  # the CSR itself was refused

    @property
    def ids(self) -> KeyIds:
        assert self.key_ids is not None, "a refused CSR has no key ids"
        return self.key_ids

    @property
    def fp(self) -> str:
        return self.ids.fingerprint


@dataclass
class _RoundState:
    """What one round looked up, updated as its requests are decided in order."""

    status: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, Any] = field(default_factory=dict)  # rows of _Lookups.tokens
    used_tokens: set[str] = field(default_factory=set)
    presented: dict[str, tuple[str, str, str | None]] = field(default_factory=dict)
    policies: dict[str, Policy] = field(default_factory=dict)
    owners: dict[str, set[str]] = field(default_factory=dict)
    active: dict[str, list[str]] = field(default_factory=dict)
    keys: dict[str, KeyRecord] = field(default_factory=dict)


def _refusal_event(
    exc: Exception, device_id: str | None, src_ip: str | None, operation: str, protocol: str
) -> Event:
    return authentication(
        device_uid=device_id,
        src_ip=src_ip,
        success=False,
        message=f"{operation} refused: {exc}",
        protocol=protocol,
        extra={"unmapped": {"identity_event": REFUSED, "reason": str(exc)}},
    )


def _refusal_of(it: _Item, exc: Exception) -> Event:
    req = it.req
    protocol = "provision" if isinstance(req.auth, OperatorAuth) else "EST"
    return _refusal_event(exc, it.claimed, req.src_ip, req.operation, protocol)


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
        self._issuer_cache: dict[tuple[bytes, tuple[str, ...]], bool] = {}

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
            self.registry.record(s, _refusal_event(exc, device_id, src_ip, operation, "EST"))

    def enroll(
        self,
        csr_der: bytes,
        auth: EnrollAuth | None,
        *,
        reenroll: bool = False,
        src_ip: str | None = None,
    ) -> Issued | Pending:
        """Check, sign and record one CSR (a batch of one, see :meth:`enroll_many`);
        raise the refusal, recorded before it is raised."""
        (result,) = self.enroll_many([EnrollmentRequest(csr_der, auth, reenroll, src_ip)])
        if isinstance(result, Exception):
            raise result
        return result

    def enroll_many(
        self,
        requests: list[EnrollmentRequest],
        *,
        isolate: bool = True,
        once_per_device: bool = False,
    ) -> list[EnrollResult]:
        """Certify many CSRs with set-based registry look-ups and one transaction per
        round (the EST group commit, factory provisioning).

        Every request gets exactly the checks and outcome it would get alone and in
        order: a device that appears twice waits for the next round (its second CSR sees
        the first certificate), a public key or token that an earlier request of the
        same round took counts as taken. Returns, per request in order, the
        certificate, the pending approval, or the refusal (recorded as an
        Authentication event in the round's transaction).

        If a round's transaction fails (database error), nothing of it is written; with
        ``isolate`` its requests are retried one per transaction, so one bad request
        cannot fail the others, and a request that still fails gets its exception as its
        result. Without ``isolate`` the exception propagates (nothing of the round is
        written). With ``once_per_device`` a device named again is refused instead of
        waiting for the next round (factory batches name each device once)."""
        now = datetime.now(UTC)
        out: list[EnrollResult | None] = [None] * len(requests)
        issuers = tuple(self.ca.issuers)
        items = [self._prepare(i, r, now, issuers) for i, r in enumerate(requests)]
        rounds: list[list[_Item]] = []
        depth: dict[str, int] = {}
        for it in items:
            k = 0
            if it.refusal is None:
                k = depth.get(it.device_id, 0)
                depth[it.device_id] = k + 1
                if k and once_per_device:
                    it.refusal = EnrollmentForbidden(
                        f"device {it.device_id!r} is named twice in the batch"
                    )
                    k = 0
            if k == len(rounds):
                rounds.append([])
            rounds[k].append(it)
        for batch in rounds:
            try:
                # each round its own time: a device's later certificate is issued later
                self._issue_round(batch, datetime.now(UTC), out)
            except Exception as exc:
                if not isolate:
                    raise
                if len(batch) == 1:
                    out[batch[0].index] = exc
                    continue
                for it in batch:  # alone, so that one bad request fails only itself
                    try:
                        self._issue_round([it], datetime.now(UTC), out)
                    except Exception as alone:
                        out[it.index] = alone
        assert all(r is not None for r in out)
        return cast(list[EnrollResult], out)

    def _prepare(
        self, index: int, req: EnrollmentRequest, now: datetime, issuers: tuple[FleetCA, ...]
    ) -> _Item:
        """What can be checked without the registry: the CSR (parse, proof of
        possession, device id) and the credentials that need no look-up."""
        auth = req.auth
        item = _Item(index, req, auth.device_id if isinstance(auth, TokenAuth) else None)
        try:
            facts = read_csr(req.csr_der)
        except EnrollmentRefused as exc:
            item.refusal = exc
            return item
        item.device_id = item.claimed = facts.device_id
        item.pub, item.key_ids, item.key_type = facts.public_key, facts.key_ids, facts.key_type
        try:
            self._credentials(item, now, issuers)
        except (EnrollmentAuthError, EnrollmentRefused) as exc:
            item.auth_error = exc  # raised in its place, after the device look-up
        return item

    def _credentials(self, item: _Item, now: datetime, issuers: tuple[FleetCA, ...]) -> None:
        auth, device_id = item.req.auth, item.device_id
        if auth is None:
            raise EnrollmentAuthError(
                "no credentials: send HTTP Basic (device id + enrolment token) "
                "or a client certificate"
            )
        if isinstance(auth, OperatorAuth):
            item.via = auth.via
            return
        if isinstance(auth, TokenAuth):
            if item.req.reenroll:
                raise EnrollmentAuthError("re-enrolment needs the current client certificate")
            if auth.device_id != device_id:
                raise EnrollmentForbidden(
                    f"the CSR names device {device_id!r} but the token user is {auth.device_id!r}"
                )
            item.via, item.token_hash = "est-token", sha256_hex(auth.secret.encode())
            return
        cert = auth.cert
        if not (cert.not_valid_before_utc <= now < cert.not_valid_after_utc):
            raise EnrollmentAuthError("the client certificate is expired or not yet valid")
        if self._from_fleet_ca(cert, issuers):
            item.via, item.serial = "est-reenroll", format(cert.serial_number, "x")
            return
        if item.req.reenroll:
            raise EnrollmentAuthError("re-enrolment needs a certificate from the fleet CA")
        if any(_issued_by(cert, m) for m in self.manufacturer_cas):
            presented = device_id_of(cert)
            if presented != device_id:
                raise EnrollmentForbidden(
                    f"the CSR names device {device_id!r} but the factory "
                    f"certificate is {presented!r}'s"
                )
            item.via = "est-factory"
            return
        raise EnrollmentAuthError(
            "the client certificate is not from the fleet or a manufacturer CA"
        )

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

    def _policies(self, s: Session, ids: list[str]) -> dict[str, Policy]:
        """Each device's rotation policy: the strictest of its groups' policies, the
        configured defaults for a device in no group with one."""
        by_device: dict[str, list[Any]] = {}
        if ids:
            conn = s.connection()
            q = lookups(conn)
            for row in conn.execute(q.policies, q.bind(ids)):
                by_device.setdefault(row.device_id, []).append(row)
        cfg = self.settings
        default = Policy(timedelta(days=cfg.device_lifetime_days), cfg.renew_fraction, None, False)
        out = {}
        for did in ids:
            rows = by_device.get(did)
            out[did] = (
                Policy(
                    lifetime=timedelta(days=min(r.lifetime_days for r in rows)),
                    renew_fraction=min(r.renew_fraction for r in rows),
                    max_key_age=timedelta(days=min(r.max_key_age_days for r in rows)),
                    allow_key_reuse=all(r.allow_key_reuse for r in rows),
                )
                if rows
                else default
            )
        return out

    def _issue_round(
        self, items: list[_Item], now: datetime, out: list[EnrollResult | None]
    ) -> None:
        """One transaction for requests of distinct devices: look-ups for all of them,
        then each request's checks in order, signing, and one multi-row insert per
        table; refusals are recorded in the same transaction."""
        live = [it for it in items if it.refusal is None]
        ids = sorted({it.device_id for it in live})
        with self._issuing(), self.registry.session() as s, s.no_autoflush:
            # Core statements built once (module level), on the session's connection:
            # no ORM objects are loaded, and no statement is built per round.
            conn = s.connection()
            q = lookups(conn)
            st = _RoundState()
            if ids:
                # each device's status and key record, in one pass
                for did, status, *key in conn.execute(q.devices, q.bind(ids)):
                    st.status[did] = status
                    if key[0] is not None:
                        st.keys[did] = KeyRecord(*key)
            hashes = [it.token_hash for it in live if it.token_hash]
            if hashes:
                st.tokens = {t.secret_hash: t for t in conn.execute(q.tokens, q.bind(hashes))}
            serials = [it.serial for it in live if it.serial]
            if serials:
                st.presented = {
                    serial: (kind, status, did)
                    for serial, kind, status, did in conn.execute(q.presented, q.bind(serials))
                }
            st.policies = self._policies(s, ids)
            fps = [it.fp for it in live]
            # From here to the commit no other writer can certify these keys (M1).
            claim_keys(s, fps)
            if fps:
                for fp, dev in conn.execute(q.owners, q.bind(fps)):
                    st.owners.setdefault(fp, set()).add(str(dev))
            if ids:
                for did, serial in conn.execute(q.active, q.bind(ids)):
                    st.active.setdefault(str(did), []).append(serial)
            rows = NewRows()
            superseded: list[str] = []
            for it in items:
                refusal = it.refusal
                if refusal is None:
                    try:
                        out[it.index] = self._decide(s, it, st, rows, superseded, now)
                        continue
                    except (EnrollmentRefused, EnrollmentAuthError, NotFoundError) as exc:
                        refusal = exc
                out[it.index] = refusal
                rows.events.append((now, _refusal_of(it, refusal).to_ocsf(), None))
            if superseded:
                conn.execute(q.supersede, q.bind(superseded))
            rows.insert(s)

    def _decide(
        self,
        s: Session,
        it: _Item,
        st: _RoundState,
        rows: NewRows,
        superseded: list[str],
        now: datetime,
    ) -> Issued | Pending:
        """One request's checks against the round's look-ups, in the order a device
        sees them: registered device, credentials, active, key policy, shared key
        (M1), key freshness and age, approval; then the certificate and its rows."""
        device_id, via = it.device_id, it.via
        operator = isinstance(it.req.auth, OperatorAuth)
        status = st.status.get(device_id)
        if status is None:
            if operator:
                raise EnrollmentForbidden(f"device {device_id!r} is not registered and active")
            raise NotFoundError(f"device {device_id!r} is not in the registry")
        if it.auth_error is not None:
            raise it.auth_error
        token = None
        if it.token_hash is not None:
            token = st.tokens.get(it.token_hash)
            if token is None or not hmac.compare_digest(token.device_id, device_id):
                raise EnrollmentAuthError("unknown enrolment token for this device")
            if token.used_at is not None or it.token_hash in st.used_tokens:
                raise EnrollmentAuthError("enrolment token already used (replay refused)")
            if aware(token.expires_at) <= now:
                raise EnrollmentAuthError("enrolment token expired")
        if it.serial is not None:
            row = st.presented.get(it.serial)
            if row is None or row[0] != "device":
                raise EnrollmentAuthError(
                    "the client certificate is not a known device certificate"
                )
            if row[1] == "revoked":
                raise EnrollmentAuthError("the client certificate is revoked")
            presented = device_id_of(cast(CertAuth, it.req.auth).cert)
            if row[2] != device_id or presented != device_id:
                raise EnrollmentForbidden(
                    f"the CSR names device {device_id!r} but the certificate is {row[2]!r}'s"
                )
        if status != "active":
            if operator:
                raise EnrollmentForbidden(f"device {device_id!r} is not registered and active")
            raise EnrollmentForbidden(f"device {device_id!r} is {status}, not active")
        key_type = check_public_key(it.pub, self.settings, kind=it.key_type)
        ids = it.ids
        fp = ids.fingerprint
        policy = st.policies[device_id]
        owners = st.owners.get(fp)
        if owners and any(o != device_id for o in owners):
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
        key = st.keys.get(device_id)
        # Key reuse allowed by policy, but never past the group's maximum key age.
        if (
            owners
            and policy.max_key_age is not None
            and key is not None
            and key.public_key_sha256 == fp
            and aware(key.key_first_certified_at) + policy.max_key_age <= now
        ):
            raise EnrollmentRefused(
                "this key is older than the group's maximum key age; use a fresh key"
            )
        approval = self.settings.manual_approval and via != "est-reenroll" and not operator
        if approval:
            pending = self._approval(s, device_id, fp)
            if pending is not None:
                return pending
        cert = self.ca.issue_device(
            device_id,
            it.pub,
            lifetime=policy.lifetime,
            now=now,
            ski=ids.ski,
        )
        serial = format(cert.serial_number, "x")
        if token is not None:
            # Conditional: another writer (PostgreSQL, another process) may have used it.
            used = s.connection().execute(_U_TOKEN, {"tid": token.id, "now": now})
            if used.rowcount != 1:
                raise EnrollmentAuthError("enrolment token already used (replay refused)")
            st.used_tokens.add(cast(str, it.token_hash))
        prev = st.active.pop(device_id, [])
        superseded.extend(prev)
        prev_serial = it.serial if it.serial is not None else (prev[-1] if prev else None)
        actor = it.req.auth.actor.name if isinstance(it.req.auth, OperatorAuth) else None
        self._store_rows(
            rows, cert, device_id, fp, key_type, via, now, prev_serial, "device", actor, key, serial
        )
        st.owners.setdefault(fp, set()).add(device_id)
        if approval:
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
        *,
        kind: str = "device",
        actor: str | None = None,
    ) -> None:
        """Rows for one certificate issued outside :meth:`enroll_many` (platform server
        certificates), in the caller's transaction."""
        rows = NewRows()
        key = None
        if device_id is not None and kind == "device":
            key = key_records(s, [device_id]).get(device_id)
        self._store_rows(rows, cert, device_id, fp, key_type, via, now, None, kind, actor, key)
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
        prev_serial: str | None,
        kind: str,
        actor: str | None,
        key: KeyRecord | None,
        serial: str | None = None,
    ) -> None:
        """Collect the new rows for one issued certificate in ``rows`` (one multi-row
        INSERT per table later, see :class:`NewRows`); an existing key record of the
        device becomes an entry of the round's executemany UPDATE."""
        der = cert.public_bytes(serialization.Encoding.DER)
        cert_fp = sha256_hex(der)
        serial = serial or format(cert.serial_number, "x")
        not_after = cert.not_valid_after_utc
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
        elif key.public_key_sha256 != fp:  # a new key: a rotation
            rows.key_updates.append((fp, key_type, now, now, key.rotations + 1, serial, device_id))
        else:  # the same key again (reuse allowed by policy): only the certificate changes
            rows.key_updates.append(
                (
                    fp,
                    key.key_type,
                    key.key_first_certified_at,
                    key.last_rotation_at,
                    key.rotations,
                    serial,
                    device_id,
                )
            )
        event = device_config_change_record(
            device_uid=device_id,
            actor=actor or f"device:{device_id}",
            message=f"certificate {serial} issued to {device_id} via {via}",
            changes={
                "identity_event": ISSUED,
                "certificate": {
                    "serial": serial,
                    "fingerprint_sha256": cert_fp,
                    "public_key_sha256": fp,
                    "not_after": _isoformat(not_after),
                    "via": via,
                    "replaces": prev_serial,
                },
            },
        )
        rows.events.append((now, event, None))

    def provision(
        self, csrs: list[bytes], actor: Actor, *, via: str = "provision"
    ) -> list[Issued | EnrollmentRefused]:
        """Factory-line provisioning: issue certificates for many CSRs at once (the
        operator is the authority, so no per-device token). The checks of EST (CSR
        signature, registered active device, key policy, shared-key M1 check, also
        within the batch) through :meth:`enroll_many`, in one transaction: if it fails,
        nothing is written and the error propagates. A device named twice is refused
        the second time (a factory batch names each device once). Returns, per CSR in
        order, the issued certificate or the refusal."""
        auth = OperatorAuth(actor, via)
        requests = [EnrollmentRequest(der, auth, src_ip=actor.src_ip) for der in csrs]
        out: list[Issued | EnrollmentRefused] = []
        for r in self.enroll_many(requests, isolate=False, once_per_device=True):
            if not isinstance(r, (Issued, EnrollmentRefused)):  # pragma: no cover
                raise AssertionError(f"provisioning cannot give {r!r}")
            out.append(r)
        return out

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

    def _from_fleet_ca(
        self, cert: x509.Certificate, issuers: tuple[FleetCA, ...] | None = None
    ) -> bool:
        """Issued by the current or a retired (still accepted) issuing CA. The answer
        is kept per certificate and set of issuing CAs: the signature check costs as
        much as a signature, and a device presents the same certificate on every
        request of its connection."""
        issuers = issuers or tuple(self.ca.issuers)
        key = (cert.fingerprint(hashes.SHA256()), tuple(ca.key_id for ca in issuers))
        known = self._issuer_cache.get(key)
        if known is None:
            known = any(_issued_by(cert, ca.cert) for ca in issuers)
            if len(self._issuer_cache) >= _ISSUER_CACHE_SIZE:
                self._issuer_cache.clear()
            self._issuer_cache[key] = known
        return known

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
                .where(text(REVOKED_SQL), IssuedCertificate.not_after > now)
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


_IC = IssuedCertificate


@dataclass(frozen=True)
class _Lookups:
    """The statements of an issuance round, built once per database kind; each takes
    one list parameter ``ids`` (see :meth:`bind`). On SQLite the list is one JSON text
    expanded by ``json_each``, on PostgreSQL one array (``= ANY``): an expanding ``IN``
    costs SQLAlchemy a bind parameter per element, which for a batch of 500 was a tenth
    of the issuance time."""

    dialect: str
    devices: Any
    tokens: Any
    presented: Any
    policies: Any
    owners: Any
    active: Any
    keys: Any
    supersede: Any

    def bind(self, values: list[str]) -> dict[str, Any]:
        return {"ids": orjson.dumps(values).decode() if self.dialect == "sqlite" else values}

    @classmethod
    def build(cls, dialect: str) -> _Lookups:
        def one_of(col: Any) -> Any:
            if dialect == "sqlite":
                values: Any = select(literal_column("value")).select_from(
                    func.json_each(bindparam("ids"))
                )
                return col.in_(values.scalar_subquery())
            if dialect == "postgresql":
                return col == any_(bindparam("ids", type_=ARRAY(String)))
            return col.in_(bindparam("ids", expanding=True))

        return cls(
            dialect=dialect,
            devices=select(
                Device.id,
                Device.status,
                DeviceKey.public_key_sha256,
                DeviceKey.key_type,
                DeviceKey.key_first_certified_at,
                DeviceKey.last_rotation_at,
                DeviceKey.rotations,
            )
            .outerjoin(DeviceKey, DeviceKey.device_id == Device.id)
            .where(one_of(Device.id)),
            tokens=select(
                EnrollmentToken.id,
                EnrollmentToken.device_id,
                EnrollmentToken.secret_hash,
                EnrollmentToken.expires_at,
                EnrollmentToken.used_at,
            ).where(one_of(EnrollmentToken.secret_hash)),
            presented=select(_IC.serial, _IC.kind, _IC.status, _IC.device_id).where(
                one_of(_IC.serial)
            ),
            policies=select(
                device_groups.c.device_id,
                RotationPolicy.lifetime_days,
                RotationPolicy.renew_fraction,
                RotationPolicy.max_key_age_days,
                RotationPolicy.allow_key_reuse,
            )
            .join(device_groups, device_groups.c.group_id == RotationPolicy.group_id)
            .where(one_of(device_groups.c.device_id)),
            owners=select(_IC.public_key_sha256, _IC.device_id).where(
                one_of(_IC.public_key_sha256)
            ),
            active=select(_IC.device_id, _IC.serial)
            .where(one_of(_IC.device_id), _IC.status == "active", _IC.kind == "device")
            .order_by(_IC.issued_at, _IC.serial),
            keys=select(
                DeviceKey.device_id,
                DeviceKey.public_key_sha256,
                DeviceKey.key_type,
                DeviceKey.key_first_certified_at,
                DeviceKey.last_rotation_at,
                DeviceKey.rotations,
            ).where(one_of(DeviceKey.device_id)),
            supersede=update(_IC).where(one_of(_IC.serial)).values(status="superseded"),
        )


_LOOKUPS: dict[str, _Lookups] = {}


def lookups(conn: Any) -> _Lookups:
    """The round statements for ``conn``'s database (built on first use)."""
    name = conn.dialect.name
    found = _LOOKUPS.get(name)
    if found is None:
        found = _LOOKUPS[name] = _Lookups.build(name)
    return found


_U_TOKEN = (
    update(EnrollmentToken)
    .where(EnrollmentToken.id == bindparam("tid"), EnrollmentToken.used_at.is_(None))
    .values(used_at=bindparam("now"))
)
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
_KEYS = cast(Table, DeviceKey.__table__)
#: one device-key record's new state (executemany; a row's values in this order)
_KEY_UPDATE_PARAMS = ("k_fp", "k_type", "k_first", "k_rotated", "k_rotations", "k_serial", "k_id")
_KEY_UPDATE = (
    update(_KEYS)
    .where(_KEYS.c.device_id == bindparam("k_id"))
    .values(
        public_key_sha256=bindparam("k_fp"),
        key_type=bindparam("k_type"),
        key_first_certified_at=bindparam("k_first"),
        last_rotation_at=bindparam("k_rotated"),
        rotations=bindparam("k_rotations"),
        current_serial=bindparam("k_serial"),
    )
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
    #: updated device-key records, in the order of :data:`_KEY_UPDATE` (device id last)
    key_updates: list[tuple[Any, ...]] = field(default_factory=list)

    def insert(self, s: Session) -> None:
        conn = s.connection()
        _CERT_ROWS.execute(conn, self.certs)
        _KEY_ROWS.execute(conn, self.keys)
        if self.key_updates:
            conn.execute(
                _KEY_UPDATE,
                [dict(zip(_KEY_UPDATE_PARAMS, u, strict=True)) for u in self.key_updates],
            )
        _EVENT_ROWS.execute(conn, self.events)


@functools.lru_cache(maxsize=64)
def _isoformat(ts: datetime) -> str:
    """``ts.isoformat()``, remembered: a round's certificates share their notAfter."""
    return ts.isoformat()


#: device ids whose RFC 4514 form is ``CN=<id>`` unchanged (nothing to escape)
_PLAIN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/=-]{0,500}")


def subject_string(cert: x509.Certificate, device_id: str | None) -> str:
    """The certificate subject as RFC 4514 text (at most 512 characters). A device
    certificate's subject is exactly ``CN=<device id>`` (see ``FleetCA.device_builder``),
    so for ids that need no escaping the text is built without parsing the name."""
    if device_id is not None and _PLAIN_ID.fullmatch(device_id):
        return ("CN=" + device_id)[:512]
    return cert.subject.rfc4514_string()[:512]


@dataclass(frozen=True)
class KeyRecord:
    """A device's key record as read for an issuance (see ``identity_device_keys``)."""

    public_key_sha256: str
    key_type: str
    key_first_certified_at: datetime
    last_rotation_at: datetime | None
    rotations: int


def key_records(s: Session, ids: list[str]) -> dict[str, KeyRecord]:
    """The key records of devices ``ids`` (those that have one)."""
    conn = s.connection()
    q = lookups(conn)
    return {
        did: KeyRecord(fp, kt, first, rotated, rotations)
        for did, fp, kt, first, rotated, rotations in conn.execute(q.keys, q.bind(ids))
    }


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
