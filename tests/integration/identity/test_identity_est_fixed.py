"""EST served in front of the framework (``identity.est.EstEndpoint``): the fixed answers
(``GET cacerts`` / ``csrattrs``) follow a rollover and a pruned retired CA; unknown
labels and operations, wrong methods and a missing fleet CA get their status codes; the
rest of the API is untouched."""

from __future__ import annotations

import base64
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from fastapi.testclient import TestClient

from fleetwarden.api import create_app
from fleetwarden.identity.ca import init_ca
from fleetwarden.identity.config import IdentitySettings
from fleetwarden.identity.est import CSR_ATTRS
from fleetwarden.identity.service import IdentityService, Issued, TokenAuth
from fleetwarden.registry import Actor, Registry
from fleetwarden.registry.schemas import DeviceCreate
from fleetwarden.settings import load_settings

ACTOR = Actor("test")


@pytest.fixture
def svc(registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> IdentityService:
    monkeypatch.delenv("FLEETWARDEN_CA_PASSPHRASE", raising=False)
    return IdentityService(registry, init_ca(tmp_path / "ca", IdentitySettings()))


def _csr(device_id: str) -> bytes:
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, device_id)])
    req = x509.CertificateSigningRequestBuilder().subject_name(name)
    return req.sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()).public_bytes(
        serialization.Encoding.DER
    )


def _cacerts(body: bytes) -> set[bytes]:  # a SET OF in DER: order not kept
    certs = pkcs7.load_der_pkcs7_certificates(base64.b64decode(body))
    return {c.tbs_certificate_bytes for c in certs}


def _tbs(certs: list[x509.Certificate]) -> set[bytes]:
    return {c.tbs_certificate_bytes for c in certs}


def test_fixed_answers_match_routes_and_follow_the_ca(
    registry: Registry, svc: IdentityService, tmp_path: Path
) -> None:
    app = create_app(load_settings(tmp_path / "data"), registry)
    with TestClient(app) as c:
        # no fleet CA on the app yet
        r = c.get("/.well-known/est/cacerts")
        assert r.status_code == 503
        assert c.post("/.well-known/est/simpleenroll").status_code == 503
        app.state.identity = svc
        for path in ("/.well-known/est/cacerts", "/.well-known/est/device/cacerts"):
            r = c.get(path)
            assert r.status_code == 200
            assert r.headers["content-type"] == "application/pkcs7-mime; smime-type=certs-only"
            assert r.headers["content-transfer-encoding"] == "base64"
            assert _cacerts(r.content) == _tbs(svc.ca.trusted)
        r = c.get("/.well-known/est/csrattrs")
        assert r.status_code == 200 and base64.b64decode(r.content) == CSR_ATTRS
        assert r.headers["content-type"] == "application/csrattrs"
        # a GET's body is not read and changes nothing
        with_body = c.request("GET", "/.well-known/est/cacerts", content=b"x")
        assert (
            with_body.status_code == 200
            and with_body.content == c.get("/.well-known/est/cacerts").content
        )
        # refusals, as text/plain with the reason
        r = c.get("/.well-known/est/bogus/cacerts")
        assert r.status_code == 404 and "unknown EST label" in r.text
        assert r.headers["content-type"] == "text/plain; charset=utf-8"
        for path in ("/.well-known/est/", "/.well-known/est/nope", "/.well-known/est/a/b/c"):
            assert c.get(path).status_code == 404
        r = c.post("/.well-known/est/cacerts")
        assert r.status_code == 405 and r.headers["allow"] == "GET"
        r = c.get("/.well-known/est/device/simpleenroll")
        assert r.status_code == 405 and r.headers["allow"] == "POST"
        # the rest of the API is the framework's as before
        assert c.get("/health").status_code == 200
        assert c.get("/v1/devices").status_code == 401

        # a rollover: the new issuing CA is served at once
        before = c.get("/.well-known/est/cacerts").content
        registry.add_device(DeviceCreate(id="d1"), ACTOR)
        issued = svc.enroll(_csr("d1"), TokenAuth("d1", svc.create_token("d1", ACTOR)))
        assert isinstance(issued, Issued)
        svc.rollover(ACTOR)
        after = c.get("/.well-known/est/cacerts").content
        assert after != before and _cacerts(after) == _tbs(svc.ca.trusted)
        assert len(svc.ca.trusted) == 3  # new issuing, retired issuing, root
        # the retired CA leaves (its list is mutated in place): served without it
        expired = issued.cert.not_valid_after_utc + timedelta(seconds=1)
        assert [d.generation for d in svc.prune_retired(now=expired)] == [1]
        pruned = c.get("/.well-known/est/cacerts").content
        assert _cacerts(pruned) == _tbs(svc.ca.trusted) and len(svc.ca.trusted) == 2
