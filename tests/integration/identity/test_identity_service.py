"""IdentityService on the real registry (SQLite and PostgreSQL): issuance records,
single-use tokens, shared-key refusal (M1), rotation tracking (C5), group policy,
revocation and the CRL built from the registry."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from fleetwarden.errors import NotFoundError, ValidationError
from fleetwarden.events import Event
from fleetwarden.identity.ca import init_ca
from fleetwarden.identity.config import IdentitySettings
from fleetwarden.identity.errors import EnrollmentAuthError, EnrollmentForbidden, EnrollmentRefused
from fleetwarden.identity.models import EnrollmentToken
from fleetwarden.identity.service import (
    CertAuth,
    IdentityService,
    Issued,
    Pending,
    TokenAuth,
    revocation_of,
)
from fleetwarden.registry import Actor
from fleetwarden.registry.models import OutboxEvent
from fleetwarden.registry.schemas import DeviceCreate, GroupCreate

ACTOR = Actor("test")


def csr(device_id: str, key=None) -> tuple[object, bytes]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    c = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    return key, c.public_bytes(serialization.Encoding.DER)


@pytest.fixture
def svc(registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> IdentityService:
    monkeypatch.delenv("FLEETWARDEN_CA_PASSPHRASE", raising=False)
    ca = init_ca(tmp_path, IdentitySettings())
    for d in ("a", "b", "c"):
        registry.add_device(DeviceCreate(id=d), ACTOR)
    return IdentityService(registry, ca)


def enroll(svc: IdentityService, device: str, key=None) -> tuple[object, Issued]:
    key, der = csr(device, key)
    out = svc.enroll(der, TokenAuth(device, svc.create_token(device, ACTOR)))
    assert isinstance(out, Issued)
    return key, out


def events(registry) -> list[Event]:
    with registry.session() as s:
        return [
            Event.from_ocsf(r.payload)
            for r in s.scalars(select(OutboxEvent).order_by(OutboxEvent.id))
        ]


def test_token_is_stored_hashed_and_single_use(svc, registry) -> None:
    tok = svc.create_token("a", ACTOR)
    with registry.session() as s:
        row = s.scalars(select(EnrollmentToken)).one()
        assert tok not in (row.secret_hash, row.id) and len(row.secret_hash) == 64
    _, der = csr("a")
    assert isinstance(svc.enroll(der, TokenAuth("a", tok)), Issued)
    _, der2 = csr("a")
    with pytest.raises(EnrollmentAuthError, match="already used"):
        svc.enroll(der2, TokenAuth("a", tok))
    with pytest.raises(NotFoundError):
        svc.create_token("nope", ACTOR)


def test_concurrent_use_of_one_token_issues_once(svc) -> None:
    tok = svc.create_token("a", ACTOR)
    results: list[object] = []

    def go() -> None:
        _, der = csr("a")
        try:
            results.append(svc.enroll(der, TokenAuth("a", tok)))
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(isinstance(r, Issued) for r in results) == 1
    assert len(svc.certificates("a")) == 1


def test_shared_key_refused_and_recorded(svc, registry) -> None:
    key, _ = enroll(svc, "a")
    _, der = csr("b", key)
    with pytest.raises(EnrollmentForbidden, match="another device"):
        svc.enroll(der, TokenAuth("b", svc.create_token("b", ACTOR)))
    assert svc.certificates("b") == []
    failures = [e for e in events(registry) if e.status_id == 2]
    assert failures and "another device" in failures[-1].message and failures[-1].device_uid == "b"


def test_rotation_tracking_and_fresh_key(svc) -> None:
    k1, first = enroll(svc, "a")
    state = svc.key_state("a")
    assert state["rotations"] == 0 and state["last_rotation_at"] is None
    _, der_same = csr("a", k1)
    with pytest.raises(EnrollmentRefused, match="fresh key"):
        svc.enroll(der_same, CertAuth(first.cert), reenroll=True)
    _, der_new = csr("a")
    second = svc.enroll(der_new, CertAuth(first.cert), reenroll=True)
    assert isinstance(second, Issued) and second.via == "est-reenroll"
    state = svc.key_state("a")
    assert state["rotations"] == 1 and state["last_rotation_at"] is not None
    assert state["current_serial"] == second.serial
    hist = svc.certificates("a")
    assert [h["status"] for h in hist] == ["superseded", "active"] and hist[1][
        "replaces"
    ] == first.serial


def test_group_policy_sets_lifetime_and_key_reuse(svc, registry) -> None:
    registry.create_group(GroupCreate(name="meters"), ACTOR)
    registry.set_membership("meters", "c", True, ACTOR)
    svc.set_policy(
        "meters",
        lifetime_days=7,
        renew_fraction=0.5,
        max_key_age_days=30,
        allow_key_reuse=True,
        actor=ACTOR,
    )
    k, out = enroll(svc, "c")
    life = out.cert.not_valid_after_utc - out.cert.not_valid_before_utc
    assert timedelta(days=7) <= life < timedelta(days=7, minutes=6)
    _, der_same = csr("c", k)
    assert isinstance(
        svc.enroll(der_same, CertAuth(out.cert), reenroll=True), Issued
    )  # reuse allowed
    with pytest.raises(ValidationError):
        svc.set_policy(
            "meters",
            lifetime_days=0,
            renew_fraction=0.5,
            max_key_age_days=1,
            allow_key_reuse=False,
            actor=ACTOR,
        )
    with pytest.raises(NotFoundError):
        svc.set_policy(
            "nope",
            lifetime_days=7,
            renew_fraction=0.5,
            max_key_age_days=1,
            allow_key_reuse=False,
            actor=ACTOR,
        )


def test_revocation_event_crl_and_reenroll_refused(svc, registry) -> None:
    _, out = enroll(svc, "a")
    enroll(svc, "b")
    with pytest.raises(ValidationError):
        svc.revoke("a", "because", ACTOR)
    assert svc.revoke("a", "key_compromise", ACTOR) == [out.serial]
    with pytest.raises(NotFoundError):
        svc.revoke("a", "key_compromise", ACTOR)  # nothing left to revoke
    crl = svc.regenerate_crl()
    assert crl.get_revoked_certificate_by_serial_number(out.cert.serial_number) is not None
    assert len(list(crl)) == 1
    assert svc.ca.paths.crl.read_bytes() == crl.public_bytes(serialization.Encoding.DER)
    revs = [r for r in (revocation_of(e) for e in events(registry)) if r]
    assert revs == [("a", [out.serial], [svc.certificates("a")[0]["fingerprint_sha256"]])]
    _, der = csr("a")
    with pytest.raises(EnrollmentAuthError, match="revoked"):
        svc.enroll(der, CertAuth(out.cert), reenroll=True)


def test_manual_approval(svc) -> None:
    svc.settings.manual_approval = True
    tok = svc.create_token("a", ACTOR)
    _, der = csr("a")
    first = svc.enroll(der, TokenAuth("a", tok))
    assert isinstance(first, Pending)
    with pytest.raises(NotFoundError):
        svc.decide(999999, True, ACTOR)
    svc.decide(first.request_id, False, ACTOR)
    with pytest.raises(EnrollmentForbidden, match="rejected"):
        svc.enroll(der, TokenAuth("a", tok))
    _, der2 = csr("a")
    second = svc.enroll(der2, TokenAuth("a", tok))
    assert isinstance(second, Pending)
    svc.decide(second.request_id, True, ACTOR)
    with pytest.raises(ValidationError):
        svc.decide(second.request_id, True, ACTOR)
    assert isinstance(svc.enroll(der2, TokenAuth("a", tok)), Issued)


def test_inactive_device_refused(svc, registry) -> None:
    from fleetwarden.registry.models import Device

    with registry.session() as s:
        s.get(Device, "a").status = "decommissioned"
    _, der = csr("a")
    with pytest.raises(EnrollmentForbidden, match="decommissioned"):
        svc.enroll(der, TokenAuth("a", svc.create_token("a", ACTOR)))


def test_expired_revoked_certificates_leave_the_crl(svc, registry) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    past = datetime.now(UTC) - timedelta(days=10)
    cert = svc.ca.issue_device("a", key.public_key(), lifetime=timedelta(days=1), now=past)
    from fleetwarden.identity.ca import public_key_fingerprint

    with registry.session() as s:
        svc._store(s, cert, "a", public_key_fingerprint(key.public_key()), "ec-p256", "test", past)
    _, live = enroll(svc, "a")
    svc.revoke("a", "superseded", ACTOR, serial=live.serial)
    from fleetwarden.identity.models import IssuedCertificate

    with registry.session() as s:
        s.get(IssuedCertificate, format(cert.serial_number, "x")).status = "revoked"
    crl = svc.regenerate_crl()
    assert [r.serial_number for r in crl] == [live.cert.serial_number]


def test_provision_batch(svc, registry) -> None:
    shared = ec.generate_private_key(ec.SECP256R1())
    _, ok_a = csr("a")
    _, dup_b = csr("b", shared)
    _, dup_c = csr("c", shared)  # same key as b in the same batch (M1)
    _, ghost = csr("ghost")
    out = svc.provision([ok_a, dup_b, dup_c, ghost, b"junk"], ACTOR)
    assert [type(r).__name__ for r in out] == [
        "Issued",
        "Issued",
        "EnrollmentForbidden",
        "EnrollmentForbidden",
        "EnrollmentRefused",
    ]
    assert svc.certificates("a")[0]["issued_via"] == "provision"
    assert svc.certificates("c") == []
    refusals = [e for e in events(registry) if e.status_id == 2]
    assert len(refusals) == 3
    # a second batch for a: the first certificate is superseded, key rotation recorded
    _, again = csr("a")
    (res,) = svc.provision([again], ACTOR)
    assert isinstance(res, Issued)
    assert [c["status"] for c in svc.certificates("a")] == ["superseded", "active"]
    assert svc.key_state("a")["rotations"] == 1
