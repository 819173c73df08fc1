"""``EstEndpoint`` at the ASGI level: what a real server hands it that a test client
does not (a body in many chunks without a declared length, a client that disconnects
mid-body, a request for another path), and the refusals it records."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from fleetwarden.identity.ca import init_ca
from fleetwarden.identity.config import IdentitySettings
from fleetwarden.identity.est import EstEndpoint
from fleetwarden.identity.service import IdentityService
from fleetwarden.registry import Actor, Registry
from fleetwarden.registry.models import OutboxEvent
from fleetwarden.registry.schemas import DeviceCreate

ACTOR = Actor("test")


@pytest.fixture
def svc(registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> IdentityService:
    monkeypatch.delenv("FLEETWARDEN_CA_PASSPHRASE", raising=False)
    registry.add_device(DeviceCreate(id="a"), ACTOR)
    return IdentityService(registry, init_ca(tmp_path, IdentitySettings()))


def csr_b64(device_id: str) -> bytes:
    c = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    )
    return base64.encodebytes(c.public_bytes(serialization.Encoding.DER))


def call(
    svc: IdentityService,
    path: str,
    chunks: list[bytes],
    *,
    method: str = "POST",
    headers: list[tuple[bytes, bytes]] | None = None,
    disconnect: bool = False,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Run one request through EstEndpoint; (messages sent, paths passed on)."""
    passed: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        passed.append(scope["path"])

    app = SimpleNamespace(state=SimpleNamespace(identity=svc))
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": headers
        if headers is not None
        else [(b"content-type", b"application/pkcs10"), (b"authorization", basic(svc))],
        "client": ("192.0.2.7", 5000),
        "app": app,
    }
    queue = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1 or disconnect}
        for i, c in enumerate(chunks)
    ]
    if disconnect:
        queue.append({"type": "http.disconnect"})
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return queue.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def go() -> None:
        endpoint = EstEndpoint(inner)
        try:
            await endpoint(scope, receive, send)
        finally:
            batcher = getattr(app.state, "est_enroller", None)
            if batcher is not None:
                batcher.close()

    asyncio.run(go())
    return sent, passed


def basic(svc: IdentityService) -> bytes:
    """HTTP Basic with a fresh enrolment token for device ``a``."""
    return b"Basic " + base64.b64encode(b"a:" + svc.create_token("a", ACTOR).encode())


def refusals(registry: Registry) -> list[str]:
    with registry.session() as s:
        return [
            p["unmapped"]["reason"]
            for p in (r.payload for r in s.scalars(select(OutboxEvent)))
            if p.get("unmapped", {}).get("identity_event") == "enrollment.refused"
        ]


def test_an_enrolment_in_many_chunks(svc: IdentityService) -> None:
    body = csr_b64("a")
    chunks = [body[i : i + 7] for i in range(0, len(body), 7)]
    sent, _ = call(svc, "/.well-known/est/simpleenroll", chunks)
    assert sent[0]["status"] == 200, sent
    headers = dict(sent[0]["headers"])
    assert headers[b"content-type"] == b"application/pkcs7-mime; smime-type=certs-only"
    assert int(headers[b"content-length"]) == len(sent[1]["body"])
    assert len(svc.certificates("a")) == 1


def test_a_body_over_the_limit_without_declared_length(
    svc: IdentityService, registry: Registry
) -> None:
    limit = svc.settings.est_max_body_bytes
    sent, _ = call(svc, "/.well-known/est/simpleenroll", [b"A" * 4096] * (limit // 4096 + 2))
    assert sent[0]["status"] == 413 and b"limit" in sent[1]["body"]
    assert any("limit" in r for r in refusals(registry))
    assert svc.certificates("a") == []


def test_a_declared_length_over_the_limit_is_refused_before_reading(
    svc: IdentityService,
) -> None:
    headers = [
        (b"content-type", b"application/pkcs10"),
        (b"content-length", str(svc.settings.est_max_body_bytes + 1).encode()),
    ]
    sent, _ = call(svc, "/.well-known/est/simpleenroll", [], headers=headers)
    assert sent[0]["status"] == 413


def test_a_client_gone_mid_body_gets_nothing_and_nothing_is_issued(
    svc: IdentityService, registry: Registry
) -> None:
    sent, _ = call(svc, "/.well-known/est/simpleenroll", [csr_b64("a")[:20]], disconnect=True)
    assert sent == []
    assert svc.certificates("a") == [] and refusals(registry) == []


def test_other_paths_go_on_to_the_api(svc: IdentityService) -> None:
    sent, passed = call(svc, "/v1/devices", [b""], method="GET")
    assert sent == [] and passed == ["/v1/devices"]
    sent, passed = call(svc, "/.well-known/estx", [b""], method="GET")
    assert passed == ["/.well-known/estx"]


def test_an_unexpected_error_is_a_bare_500(
    svc: IdentityService, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(self: object, *a: object, **k: object) -> None:
        raise RuntimeError("secret detail /etc/key")

    monkeypatch.setattr(EstEndpoint, "_answer", boom)
    sent, _ = call(svc, "/.well-known/est/simpleenroll", [csr_b64("a")])
    assert sent[0]["status"] == 500
    assert b"secret" not in sent[1]["body"] and b"internal error" in sent[1]["body"]
