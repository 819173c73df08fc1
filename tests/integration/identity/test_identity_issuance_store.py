"""The issuance store: multi-row inserts, the M1 key claim across writers, atomicity.

Runs on SQLite and PostgreSQL (the ``registry`` fixture). "Another writer" is a second
:class:`IdentityService` on its own engine, as a second API worker process or the CLI
would be: it shares no Python lock with the first, only the database.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import func, select

from fleetwarden.identity import service as service_module
from fleetwarden.identity.bulk import RowInserter
from fleetwarden.identity.ca import init_ca, public_key_fingerprint
from fleetwarden.identity.config import IdentitySettings
from fleetwarden.identity.errors import (
    EnrollmentAuthError,
    EnrollmentForbidden,
    EnrollmentRefused,
)
from fleetwarden.identity.models import DeviceKey, EnrollmentToken, IssuedCertificate
from fleetwarden.identity.service import (
    EnrollmentRequest,
    IdentityService,
    Issued,
    TokenAuth,
    subject_string,
)
from fleetwarden.registry import Actor, Registry
from fleetwarden.registry.models import OutboxEvent
from fleetwarden.registry.schemas import DeviceCreate

ACTOR = Actor("test")


def csr(device_id: str, key: ec.EllipticCurvePrivateKey | None = None) -> tuple[object, bytes]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    c = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    return key, c.public_bytes(serialization.Encoding.DER)


@pytest.fixture
def svc(registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> IdentityService:
    monkeypatch.delenv("FLEETWARDEN_CA_PASSPHRASE", raising=False)
    ca = init_ca(tmp_path, IdentitySettings())
    for d in ("a", "b", "c"):
        registry.add_device(DeviceCreate(id=d), ACTOR)
    return IdentityService(registry, ca)


@pytest.fixture
def other(svc: IdentityService, db_url: str) -> IdentityService:
    """A second writer: own engine, own service, same database and CA."""
    reg = Registry.open(db_url, upgrade=False)
    yield IdentityService(reg, svc.ca)
    reg.close()


def counts(registry: Registry) -> tuple[int, int, int]:
    with registry.session() as s:
        return (
            s.scalar(select(func.count()).select_from(IssuedCertificate)) or 0,
            s.scalar(select(func.count()).select_from(DeviceKey)) or 0,
            s.scalar(select(func.count()).select_from(OutboxEvent)) or 0,
        )


def test_provision_stores_complete_rows(svc: IdentityService, registry: Registry) -> None:
    keys = [csr(d) for d in ("a", "b")]
    out = svc.provision([der for _, der in keys], ACTOR)
    assert all(isinstance(r, Issued) for r in out)
    with registry.session() as s:
        for (key, _), issued in zip(keys, out, strict=True):
            assert isinstance(issued, Issued)
            row = s.get(IssuedCertificate, issued.serial)
            assert row is not None and row.device_id == issued.device_id
            der = issued.cert.public_bytes(serialization.Encoding.DER)
            assert row.der == der
            assert row.fingerprint_sha256 == hashlib.sha256(der).hexdigest()
            fp = public_key_fingerprint(key.public_key())  # type: ignore[attr-defined]
            assert row.public_key_sha256 == fp
            assert row.subject == issued.cert.subject.rfc4514_string() == f"CN={issued.device_id}"
            assert row.status == "active" and row.kind == "device" and row.key_type == "ec-p256"
            assert row.not_after.replace(tzinfo=None) == issued.cert.not_valid_after_utc.replace(
                tzinfo=None
            )
            k = s.get(DeviceKey, issued.device_id)
            assert k is not None and k.current_serial == issued.serial and k.public_key_sha256 == fp
        payloads = [r.payload for r in s.scalars(select(OutboxEvent).order_by(OutboxEvent.id))]
    issued_events = [
        p["unmapped"]["changes"]["certificate"]["serial"]
        for p in payloads
        if p.get("unmapped", {}).get("changes", {}).get("identity_event") == "certificate.issued"
    ]
    assert issued_events == [r.serial for r in out if isinstance(r, Issued)]


def test_provision_refuses_a_key_already_certified_for_another_device(
    svc: IdentityService, registry: Registry
) -> None:
    key, der = csr("a")
    (first,) = svc.provision([der], ACTOR)
    assert isinstance(first, Issued)
    _, der_b = csr("b", key)  # type: ignore[arg-type]
    _, der_c = csr("c")
    out = svc.provision([der_b, der_c], ACTOR)
    assert isinstance(out[0], EnrollmentForbidden) and isinstance(out[1], Issued)
    assert svc.certificates("b") == [] and svc.key_state("b") is None


def test_provision_refuses_the_same_device_twice_in_a_batch(svc: IdentityService) -> None:
    _, one = csr("a")
    _, two = csr("a")
    out = svc.provision([one, two], ACTOR)
    assert isinstance(out[0], Issued) and isinstance(out[1], EnrollmentForbidden)
    assert len(svc.certificates("a")) == 1


def test_failed_batch_writes_nothing(
    svc: IdentityService, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = counts(registry)

    def broken(conn: object, rows: object) -> None:
        raise RuntimeError("disk full")

    # the certificate and key rows are already inserted when the event insert fails
    monkeypatch.setattr(service_module._EVENT_ROWS, "execute", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        svc.provision([csr("a")[1], csr("b")[1]], ACTOR)
    assert counts(registry) == before
    monkeypatch.undo()
    assert all(isinstance(r, Issued) for r in svc.provision([csr("a")[1]], ACTOR))


def test_failed_enrolment_keeps_the_token(
    svc: IdentityService, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = svc.create_token("a", ACTOR)
    before = counts(registry)

    def broken(conn: object, rows: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(service_module._KEY_ROWS, "execute", broken)
    with pytest.raises(RuntimeError):
        svc.enroll(csr("a")[1], TokenAuth("a", token))
    assert counts(registry) == before
    with registry.session() as s:
        assert s.scalars(select(EnrollmentToken)).one().used_at is None
    monkeypatch.undo()
    assert isinstance(svc.enroll(csr("a")[1], TokenAuth("a", token)), Issued)


def _race(first: IdentityService, second: IdentityService, monkeypatch, calls) -> list[object]:
    """Run two enrolments so that both have passed every read before the key check;
    without the key claim both would see the key as unowned."""
    barrier = threading.Barrier(2, timeout=20)
    real = IdentityService._policies

    def policies(self: IdentityService, s: object, ids: list[str]):  # type: ignore[no-untyped-def]
        out = real(self, s, ids)  # type: ignore[arg-type]
        barrier.wait()
        return out

    monkeypatch.setattr(IdentityService, "_policies", policies)
    results: list[object] = []

    def go(service: IdentityService, call) -> None:  # type: ignore[no-untyped-def]
        try:
            results.append(call(service))
        except Exception as exc:
            results.append(exc)

    threads = [
        threading.Thread(target=go, args=(first, calls[0])),
        threading.Thread(target=go, args=(second, calls[1])),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_shared_key_race_between_two_writers_issues_once(
    svc: IdentityService, other: IdentityService, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    tok_a, tok_b = svc.create_token("a", ACTOR), svc.create_token("b", ACTOR)
    der_a, der_b = csr("a", key)[1], csr("b", key)[1]
    results = _race(
        svc,
        other,
        monkeypatch,
        (
            lambda s: s.enroll(der_a, TokenAuth("a", tok_a)),
            lambda s: s.enroll(der_b, TokenAuth("b", tok_b)),
        ),
    )
    assert sum(isinstance(r, Issued) for r in results) == 1, results
    refused = [r for r in results if not isinstance(r, Issued)]
    assert len(refused) == 1 and isinstance(refused[0], EnrollmentForbidden), refused
    assert len(svc.certificates("a")) + len(svc.certificates("b")) == 1


def test_one_token_raced_by_two_writers_issues_once(
    svc: IdentityService, other: IdentityService, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = svc.create_token("a", ACTOR)
    der1, der2 = csr("a")[1], csr("a")[1]
    results = _race(
        svc,
        other,
        monkeypatch,
        (
            lambda s: s.enroll(der1, TokenAuth("a", token)),
            lambda s: s.enroll(der2, TokenAuth("a", token)),
        ),
    )
    assert sum(isinstance(r, Issued) for r in results) == 1, results
    assert [type(r) for r in results if not isinstance(r, Issued)] == [EnrollmentAuthError]
    assert len(svc.certificates("a")) == 1


@pytest.mark.parametrize(
    "device_id", ["plain-1", "a.b:c@d/e=f_g", "a,b", "#lead", " lead", "tail ", 'q"uote', "x+y;z"]
)
def test_subject_text_matches_rfc4514(svc: IdentityService, device_id: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = svc.ca.issue_device(device_id, key.public_key())
    assert subject_string(cert, device_id) == cert.subject.rfc4514_string()


def test_row_inserter_refuses_bad_rows(registry: Registry) -> None:
    with pytest.raises(ValueError, match="no column"):
        RowInserter(IssuedCertificate.__table__, ["serial", "nope"])  # type: ignore[arg-type]
    ins = RowInserter(OutboxEvent.__table__, ["created_at", "payload", "relayed_at"])  # type: ignore[arg-type]
    with registry.engine.begin() as conn, pytest.raises(ValueError, match="needs 3"):
        ins.execute(conn, [(None, {})])


def test_a_device_id_too_long_for_a_cn_is_refused_with_its_reason(
    svc: IdentityService, registry: Registry
) -> None:
    """The registry takes ids of up to 128 characters, a certificate's CN only 64: the
    CSR is refused with the reason and a security event, nothing issued (it used to
    fail while building the certificate, a 500 on EST)."""
    long_id = "l" * 80
    registry.add_device(DeviceCreate(id=long_id), ACTOR)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, long_id, _validate=False)])
    key = ec.generate_private_key(ec.SECP256R1())
    der = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(name)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    token = svc.create_token(long_id, ACTOR)
    before = counts(registry)
    (provisioned,) = svc.provision([der], ACTOR)
    (enrolled,) = svc.enroll_many([EnrollmentRequest(der, TokenAuth(long_id, token))])
    for out in (provisioned, enrolled):
        assert isinstance(out, EnrollmentRefused), out
        assert "RFC 5280 ub-common-name" in str(out)
    certs, keys, events = counts(registry)
    assert (certs, keys, events) == (before[0], before[1], before[2] + 2)
    assert svc.certificates(long_id) == []
