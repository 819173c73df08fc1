"""The EST group commit: :meth:`IdentityService.enroll_many` gives every request the
outcome it would get alone and in order, records each refusal, and isolates a request
whose transaction fails; :class:`EnrollBatcher` batches concurrent requests and routes
each result to its own caller.

Runs on SQLite and PostgreSQL (the ``registry`` fixture).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import func, inspect, select

from fleetwarden.errors import NotFoundError
from fleetwarden.identity import service as service_module
from fleetwarden.identity.batching import EnrollBatcher
from fleetwarden.identity.ca import init_ca
from fleetwarden.identity.config import IdentitySettings
from fleetwarden.identity.errors import (
    EnrollmentAuthError,
    EnrollmentForbidden,
    EnrollmentRefused,
)
from fleetwarden.identity.models import IssuedCertificate
from fleetwarden.identity.service import (
    CertAuth,
    EnrollmentRequest,
    IdentityService,
    Issued,
    TokenAuth,
)
from fleetwarden.registry import Actor, Registry
from fleetwarden.registry.models import OutboxEvent
from fleetwarden.registry.schemas import DeviceCreate

ACTOR = Actor("test")
DEVICES = ("a", "b", "c", "d")


def csr(device_id: str, key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    c = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    return c.public_bytes(serialization.Encoding.DER)


@pytest.fixture
def svc(registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> IdentityService:
    monkeypatch.delenv("FLEETWARDEN_CA_PASSPHRASE", raising=False)
    ca = init_ca(tmp_path, IdentitySettings())
    for d in DEVICES:
        registry.add_device(DeviceCreate(id=d), ACTOR)
    return IdentityService(registry, ca)


def token(svc: IdentityService, device_id: str) -> TokenAuth:
    return TokenAuth(device_id, svc.create_token(device_id, ACTOR))


def refusal_reasons(registry: Registry) -> list[str]:
    with registry.session() as s:
        payloads = [r.payload for r in s.scalars(select(OutboxEvent).order_by(OutboxEvent.id))]
    return [
        p["unmapped"]["reason"]
        for p in payloads
        if p.get("unmapped", {}).get("identity_event") == "enrollment.refused"
    ]


def test_a_batch_gives_each_request_its_sequential_outcome(
    svc: IdentityService, registry: Registry
) -> None:
    shared = ec.generate_private_key(ec.SECP256R1())
    tok_a = token(svc, "a")
    tok_c = token(svc, "c")
    requests = [
        EnrollmentRequest(csr("a"), tok_a),  # issued
        EnrollmentRequest(csr("a"), tok_a),  # same token again: replay, refused
        EnrollmentRequest(csr("b", shared), token(svc, "b")),  # issued
        EnrollmentRequest(csr("c", shared), tok_c),  # b's key, same batch: M1, refused
        EnrollmentRequest(csr("ghost"), token(svc, "d")),  # token user d, CSR ghost
        EnrollmentRequest(b"junk", None),  # not a CSR
        EnrollmentRequest(csr("d"), None),  # no credentials
    ]
    out = svc.enroll_many(requests)
    assert isinstance(out[0], Issued) and out[0].device_id == "a"
    assert isinstance(out[1], EnrollmentAuthError) and "replay" in str(out[1])
    assert isinstance(out[2], Issued) and out[2].device_id == "b"
    assert isinstance(out[3], EnrollmentForbidden) and "another device" in str(out[3])
    assert isinstance(out[4], NotFoundError | EnrollmentForbidden)
    assert isinstance(out[5], EnrollmentRefused) and "PKCS#10" in str(out[5])
    assert isinstance(out[6], EnrollmentAuthError) and "no credentials" in str(out[6])
    # every refusal recorded, nothing issued for them
    assert len(refusal_reasons(registry)) == 5
    assert svc.certificates("c") == [] and svc.certificates("d") == []
    # c's token was not consumed by its refused request: it still works
    assert isinstance(svc.enroll(csr("c"), tok_c), Issued)


def test_a_device_twice_in_a_batch_is_issued_in_order(svc: IdentityService) -> None:
    (first,) = svc.enroll_many([EnrollmentRequest(csr("a"), token(svc, "a"))])
    assert isinstance(first, Issued)
    auth = CertAuth(first.cert)
    out = svc.enroll_many(
        [
            EnrollmentRequest(csr("a"), auth, reenroll=True),
            EnrollmentRequest(csr("b"), token(svc, "b")),
            EnrollmentRequest(csr("a"), auth, reenroll=True),
        ]
    )
    assert all(isinstance(r, Issued) for r in out), out
    second, third = out[0], out[2]
    assert isinstance(second, Issued) and isinstance(third, Issued)
    history = svc.certificates("a")
    assert [c["status"] for c in history] == ["superseded", "superseded", "active"]
    assert history[-1]["serial"] == third.serial
    assert svc.key_state("a")["rotations"] == 2  # type: ignore[index]


def test_reenrolment_with_the_same_key_in_one_batch_is_refused(svc: IdentityService) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    (first,) = svc.enroll_many([EnrollmentRequest(csr("a"), token(svc, "a"))])
    assert isinstance(first, Issued)
    again = csr("a", key)
    out = svc.enroll_many(
        [
            EnrollmentRequest(again, CertAuth(first.cert), reenroll=True),
            EnrollmentRequest(again, CertAuth(first.cert), reenroll=True),
        ]
    )
    assert isinstance(out[0], Issued)
    assert isinstance(out[1], EnrollmentRefused) and "fresh key" in str(out[1])


def test_a_failing_request_fails_alone(
    svc: IdentityService, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = IdentityService._store_rows

    def store_rows(self: IdentityService, rows: object, cert: object, device_id: str, *a: object):  # type: ignore[no-untyped-def]
        if device_id == "b":
            raise RuntimeError("disk full")
        return real(self, rows, cert, device_id, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(IdentityService, "_store_rows", store_rows)
    tok_b = token(svc, "b")
    out = svc.enroll_many(
        [
            EnrollmentRequest(csr("a"), token(svc, "a")),
            EnrollmentRequest(csr("b"), tok_b),
            EnrollmentRequest(csr("c"), token(svc, "c")),
            EnrollmentRequest(b"junk", None),
        ]
    )
    assert isinstance(out[0], Issued) and isinstance(out[2], Issued)
    assert isinstance(out[1], RuntimeError)
    assert isinstance(out[3], EnrollmentRefused)
    assert svc.certificates("b") == []
    assert len(refusal_reasons(registry)) == 1  # junk, recorded in its retry
    # nothing of b's request was written: its token is unused
    monkeypatch.undo()
    assert isinstance(svc.enroll(csr("b"), tok_b), Issued)


def test_without_isolation_a_failing_round_writes_nothing(
    svc: IdentityService, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(conn: object, rows: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(service_module._EVENT_ROWS, "execute", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        svc.enroll_many(
            [EnrollmentRequest(csr(d), token(svc, d)) for d in ("a", "b")], isolate=False
        )
    with registry.session() as s:
        assert s.scalar(select(func.count()).select_from(IssuedCertificate)) == 0


def test_device_status_index_serves_the_active_lookup(registry: Registry) -> None:
    indexes = {
        i["name"]: i["column_names"]
        for i in inspect(registry.engine).get_indexes("identity_certificates")
    }
    assert indexes["ix_identity_certificates_device_status"] == ["device_id", "status"]
    assert "ix_identity_certificates_device_id" not in indexes


def test_batcher_groups_concurrent_requests_and_routes_results(svc: IdentityService) -> None:
    requests = [EnrollmentRequest(csr(d), token(svc, d)) for d in DEVICES]
    requests.append(EnrollmentRequest(csr("a"), TokenAuth("a", "fwe_not-a-token")))

    async def run() -> tuple[list[object], EnrollBatcher]:
        batcher = EnrollBatcher(svc, max_batch=3)
        try:
            return list(await asyncio.gather(*(batcher.submit(r) for r in requests))), batcher
        finally:
            batcher.close()

    results, batcher = asyncio.run(run())
    assert [r.device_id for r in results[:4]] == list(DEVICES)  # type: ignore[union-attr]
    assert isinstance(results[4], EnrollmentAuthError)
    # all five were queued before the first batch started: batches of at most 3
    assert batcher.requests == 5 and batcher.batches == 2


def test_batcher_reports_an_engine_failure_to_every_caller(
    svc: IdentityService, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(requests: list[EnrollmentRequest]) -> list[object]:
        raise RuntimeError("engine down")

    monkeypatch.setattr(svc, "enroll_many", broken)

    async def run() -> list[object]:
        batcher = EnrollBatcher(svc)
        try:
            reqs = [EnrollmentRequest(csr(d), None) for d in ("a", "b")]
            return list(await asyncio.gather(*(batcher.submit(r) for r in reqs)))
        finally:
            batcher.close()

    results = asyncio.run(run())
    assert all(isinstance(r, RuntimeError) and "engine down" in str(r) for r in results)
    with pytest.raises(ValueError, match="max_batch"):
        EnrollBatcher(svc, max_batch=0)
