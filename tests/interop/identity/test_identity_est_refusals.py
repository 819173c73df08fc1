"""Every bad input on the EST path is refused with a clear reason, nothing is issued and
a Failure event is recorded. Real HTTPS (client certificates through real TLS)."""

from __future__ import annotations

import base64
import ssl
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from identity_support import make_csr

pytestmark = [pytest.mark.interop]

ENROLL = "/.well-known/est/simpleenroll"
REENROLL = "/.well-known/est/simplereenroll"
PKCS10 = {"Content-Type": "application/pkcs10"}


def b64(der: bytes) -> bytes:
    return base64.encodebytes(der)


def post(fleet, path: str, body: bytes, *, auth=None, headers=None, tls=None) -> httpx.Response:
    with httpx.Client(verify=tls or fleet.tls(), timeout=10) as c:
        return c.post(fleet.base + path, content=body, auth=auth, headers=headers or PKCS10)


def write_pair(tmp: Path, name: str, cert: x509.Certificate, key) -> tuple[Path, Path]:
    c, k = tmp / f"{name}.crt", tmp / f"{name}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return c, k


def refused(fleet, before_issued: int, before_refusals: int, text: str) -> None:
    assert fleet.issued_count() == before_issued, "something was issued"
    new = fleet.refusals()[before_refusals:]
    assert new, "no refusal event recorded"
    assert any(text in e["message"] for e in new), [e["message"] for e in new]


@pytest.fixture
def state(fleet):
    return fleet.issued_count(), len(fleet.refusals())


def test_bad_base64(fleet, state) -> None:
    fleet.add_device("bad-b64")
    r = post(fleet, ENROLL, b"!!!not base64!!!", auth=("bad-b64", fleet.token("bad-b64")))
    assert r.status_code == 400 and "base64" in r.text
    refused(fleet, *state, "base64")


def test_wrong_content_type(fleet, state) -> None:
    fleet.add_device("bad-ct")
    _, csr = make_csr("bad-ct")
    r = post(
        fleet,
        ENROLL,
        b64(csr),
        auth=("bad-ct", fleet.token("bad-ct")),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 415 and "application/pkcs10" in r.text
    refused(fleet, *state, "Content-Type")


def test_body_over_limit(fleet, state) -> None:
    fleet.add_device("bad-size")
    r = post(fleet, ENROLL, b"A" * 40_000, auth=("bad-size", fleet.token("bad-size")))
    assert r.status_code == 413
    refused(fleet, *state, "limit")


def test_not_a_csr(fleet, state) -> None:
    fleet.add_device("bad-der")
    r = post(fleet, ENROLL, b64(b"\x30\x03\x02\x01\x01"), auth=("bad-der", fleet.token("bad-der")))
    assert r.status_code == 400 and "PKCS#10" in r.text
    refused(fleet, *state, "PKCS#10")


def test_csr_with_bad_signature(fleet, state) -> None:
    fleet.add_device("bad-sig")
    _, csr = make_csr("bad-sig")
    tampered = bytearray(csr)
    tampered[-5] ^= 0x01  # inside the signature value
    r = post(fleet, ENROLL, b64(bytes(tampered)), auth=("bad-sig", fleet.token("bad-sig")))
    assert r.status_code == 400 and "signature" in r.text
    refused(fleet, *state, "signature")


def test_csr_naming_another_device(fleet, state) -> None:
    fleet.add_device("me-1")
    fleet.add_device("victim-1")
    _, csr = make_csr("victim-1")
    r = post(fleet, ENROLL, b64(csr), auth=("me-1", fleet.token("me-1")))
    assert r.status_code == 403 and "victim-1" in r.text
    refused(fleet, *state, "victim-1")


@pytest.mark.parametrize(
    ("name", "key", "why"),
    [
        ("weak-rsa", lambda: rsa.generate_private_key(65537, 1024), "1024 bits"),
        ("rsa-2048", lambda: rsa.generate_private_key(65537, 2048), "not allowed by policy"),
        ("p384", lambda: ec.generate_private_key(ec.SECP384R1()), "not allowed by policy"),
        ("p521", lambda: ec.generate_private_key(ec.SECP521R1()), "not allowed"),
    ],
)
def test_weak_or_disallowed_key(fleet, name, key, why) -> None:
    before = fleet.issued_count(), len(fleet.refusals())
    fleet.add_device(name)
    _, csr = make_csr(name, key())
    r = post(fleet, ENROLL, b64(csr), auth=(name, fleet.token(name)))
    assert r.status_code == 400 and why in r.text
    refused(fleet, *before, why)


def test_reused_public_key_refused(fleet) -> None:
    fleet.add_device("owner-1")
    fleet.add_device("copy-1")
    key, csr = make_csr("owner-1")
    assert (
        post(fleet, ENROLL, b64(csr), auth=("owner-1", fleet.token("owner-1"))).status_code == 200
    )
    before = fleet.issued_count(), len(fleet.refusals())
    _, csr2 = make_csr("copy-1", key)  # same key, another device (M1)
    r = post(fleet, ENROLL, b64(csr2), auth=("copy-1", fleet.token("copy-1")))
    assert r.status_code == 403 and "another device" in r.text
    refused(fleet, *before, "another device")


def test_replayed_and_expired_tokens(fleet) -> None:
    fleet.add_device("tok-1")
    tok = fleet.token("tok-1")
    _, csr = make_csr("tok-1")
    assert post(fleet, ENROLL, b64(csr), auth=("tok-1", tok)).status_code == 200
    before = fleet.issued_count(), len(fleet.refusals())
    _, csr2 = make_csr("tok-1")
    r = post(fleet, ENROLL, b64(csr2), auth=("tok-1", tok))
    assert r.status_code == 401 and "already used" in r.text
    assert r.headers["www-authenticate"].startswith("Basic")
    refused(fleet, *before, "already used")
    fleet.add_device("tok-2")
    old = fleet.token("tok-2", ttl=timedelta(seconds=1))
    time.sleep(1.2)
    before = fleet.issued_count(), len(fleet.refusals())
    _, csr3 = make_csr("tok-2")
    r = post(fleet, ENROLL, b64(csr3), auth=("tok-2", old))
    assert r.status_code == 401 and "expired" in r.text
    refused(fleet, *before, "expired")
    # a token is bound to its device: tok-2's token for another device
    fleet.add_device("tok-3")
    other = fleet.token("tok-2")
    _, csr4 = make_csr("tok-3")
    r = post(fleet, ENROLL, b64(csr4), auth=("tok-3", other))
    assert r.status_code == 401
    # no credentials at all
    r = post(fleet, ENROLL, b64(csr4))
    assert r.status_code == 401 and "no credentials" in r.text


def test_reenroll_with_expired_certificate(fleet, tmp_path) -> None:
    fleet.add_device("old-1")
    key = ec.generate_private_key(ec.SECP256R1())
    svc = fleet.service
    past = datetime.now(UTC) - timedelta(days=3)
    cert = svc.ca.issue_device("old-1", key.public_key(), lifetime=timedelta(days=1), now=past)
    with fleet.registry.session() as s:
        from fleetwarden.identity.ca import public_key_fingerprint

        svc._store(
            s,
            cert,
            "old-1",
            public_key_fingerprint(key.public_key()),
            "ec-p256",
            "test",
            past,
        )
    c, k = write_pair(tmp_path, "old", cert, key)
    before = fleet.issued_count(), len(fleet.refusals())
    _, csr = make_csr("old-1")
    r = post(fleet, REENROLL, b64(csr), tls=fleet.tls(c, k))
    assert r.status_code == 401 and "expired" in r.text
    refused(fleet, *before, "expired")


def test_reenroll_requires_fresh_key_and_same_device(fleet, tmp_path) -> None:
    fleet.add_device("fresh-1")
    key, csr = make_csr("fresh-1")
    r = post(fleet, ENROLL, b64(csr), auth=("fresh-1", fleet.token("fresh-1")))
    cert = pkcs7.load_der_pkcs7_certificates(base64.b64decode(r.content))[0]
    c, k = write_pair(tmp_path, "fresh", cert, key)
    before = fleet.issued_count(), len(fleet.refusals())
    r = post(fleet, REENROLL, b64(csr), tls=fleet.tls(c, k))  # same key again
    assert r.status_code == 400 and "fresh key" in r.text
    refused(fleet, *before, "fresh key")
    fleet.add_device("fresh-2")
    _, other = make_csr("fresh-2")
    r = post(fleet, REENROLL, b64(other), tls=fleet.tls(c, k))
    assert r.status_code == 403 and "fresh-2" in r.text
    # re-enrolment without a client certificate
    _, new = make_csr("fresh-1")
    r = post(fleet, REENROLL, b64(new), auth=("fresh-1", fleet.token("fresh-1")))
    assert r.status_code == 401
    assert fleet.issued_count() == before[0]


def test_client_cert_from_unknown_ca_fails_handshake(fleet, tmp_path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "intruder")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .issuer_name(name)
        .subject_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    c, k = write_pair(tmp_path, "intruder", cert, key)
    before = fleet.issued_count(), len(fleet.refusals())
    _, csr = make_csr("intruder")
    with pytest.raises(
        (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, ssl.SSLError)
    ):
        post(fleet, REENROLL, b64(csr), tls=fleet.tls(c, k))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(fleet.refusals()) == before[1]:
        time.sleep(0.05)
    refused(fleet, *before, "TLS client certificate refused")


def test_factory_certificate_bootstraps(fleet, tmp_path) -> None:
    fleet.add_device("fac-1")
    fkey = ec.generate_private_key(ec.SECP256R1())
    fcert = fleet.factory_cert("fac-1", fkey)
    c, k = write_pair(tmp_path, "factory", fcert, fkey)
    _, csr = make_csr("fac-1")
    r = post(fleet, ENROLL, b64(csr), tls=fleet.tls(c, k))
    assert r.status_code == 200, r.text
    assert fleet.service.certificates("fac-1")[0]["issued_via"] == "est-factory"
    # a factory certificate only vouches for its own device
    fleet.add_device("fac-2")
    before = fleet.issued_count(), len(fleet.refusals())
    _, csr2 = make_csr("fac-2")
    r = post(fleet, ENROLL, b64(csr2), tls=fleet.tls(c, k))
    assert r.status_code == 403
    refused(fleet, *before, "factory")
    # and cannot be used to re-enrol
    r = post(fleet, REENROLL, b64(csr), tls=fleet.tls(c, k))
    assert r.status_code == 401


def test_unknown_device_and_label(fleet, state) -> None:
    _, csr = make_csr("ghost-1")
    r = post(fleet, ENROLL, b64(csr), auth=("ghost-1", "fwe_x"))
    assert r.status_code == 403 and "not in the registry" in r.text
    refused(fleet, *state, "ghost-1")
    r = post(fleet, "/.well-known/est/nolabel/simpleenroll", b64(csr), auth=("ghost-1", "x"))
    assert r.status_code == 404


def test_manual_approval_answers_202_then_issues(fleet) -> None:
    svc = fleet.service
    fleet.add_device("wait-1")
    tok = fleet.token("wait-1")
    _, csr = make_csr("wait-1")
    svc.settings.manual_approval = True
    try:
        r = post(fleet, ENROLL, b64(csr), auth=("wait-1", tok))
        assert r.status_code == 202 and int(r.headers["retry-after"]) > 0
        reqs = [q for q in svc.pending_requests() if q["device_id"] == "wait-1"]
        assert len(reqs) == 1
        assert post(fleet, ENROLL, b64(csr), auth=("wait-1", tok)).status_code == 202
        assert len([q for q in svc.pending_requests() if q["device_id"] == "wait-1"]) == 1
        approve = fleet.cli("ca", "approve", str(reqs[0]["id"]))
        assert approve.returncode == 0, approve.stderr
        r = post(fleet, ENROLL, b64(csr), auth=("wait-1", tok))
        assert r.status_code == 200
    finally:
        svc.settings.manual_approval = False
