"""Release ingestion: verify against product keys, server-side anti-rollback, events."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import select

from fleetwarden.errors import ConflictError, NotFoundError, ValidationError
from fleetwarden.firmware.errors import DowngradeError, ImageRejectedError
from fleetwarden.firmware.image import HEADER, ImageVersion, sign_image
from fleetwarden.firmware.keys import FileSigner, generate_key, public_pem
from fleetwarden.firmware.models import FirmwareRelease
from fleetwarden.firmware.repository import Repository
from fleetwarden.firmware.service import FirmwareService
from fleetwarden.registry import Actor, Registry
from fleetwarden.registry.models import OutboxEvent
from fleetwarden.settings import Settings

ACTOR = Actor("cli:test")


@pytest.fixture
def svc(registry: Registry, tmp_path: Path) -> FirmwareService:
    s = FirmwareService(registry, Settings(data_dir=tmp_path / "data"))
    s.repo.init(tmp_path / "rootkeys", passphrase=b"root passphrase")
    return s


def _img(tmp_path: Path, signer: FileSigner, version: str, counter: int) -> Path:
    raw = tmp_path / f"raw-{version}"
    raw.write_bytes(os.urandom(4096))
    out = tmp_path / f"img-{version}-{counter}.bin"
    sign_image(raw, out, signer, version=ImageVersion.parse(version), security_counter=counter)
    return out


def _events(registry: Registry) -> list[dict]:  # type: ignore[type-arg]
    with registry.session() as s:
        return [e.payload for e in s.scalars(select(OutboxEvent).order_by(OutboxEvent.id))]


def test_publish_and_refusals(svc: FirmwareService, registry: Registry, tmp_path: Path) -> None:
    key = FileSigner(generate_key("ecdsa-p256"))
    svc.add_product("gateway", ACTOR)
    with pytest.raises(ImageRejectedError, match="no trusted signing key"):
        svc.publish(_img(tmp_path, key, "1.0.0", 1), "gateway", "1.0.0", ACTOR)
    svc.trust_key("gateway", public_pem(key.public_key()).encode(), ACTOR, "release key")
    rel = svc.publish(_img(tmp_path, key, "1.0.0", 1), "gateway", "1.0.0", ACTOR)
    assert (rel.version, rel.security_counter) == ("1.0.0", 1)
    assert rel.target_name == "gateway/1.0.0/gateway-1.0.0.bin"
    assert svc.repo.target_path(rel.target_name) is not None

    cases = [
        (_img(tmp_path, key, "1.0.0", 2), "1.0.0", DowngradeError, "not higher than 1.0.0"),
        (_img(tmp_path, key, "0.9.0", 5), "0.9.0", DowngradeError, "not higher"),
        (_img(tmp_path, key, "1.1.0", 1), "1.1.0", DowngradeError, "security counter 1"),
        (_img(tmp_path, key, "1.2.0", 3), "1.3.0", ImageRejectedError, "mismatched release"),
        (
            _img(tmp_path, FileSigner(generate_key("ed25519")), "2.0.0", 9),
            "2.0.0",
            ImageRejectedError,
            "unknown key",
        ),
    ]
    garbage = tmp_path / "garbage.bin"
    # a valid-looking header announcing 100,000 payload bytes, then nothing
    garbage.write_bytes(HEADER.pack(0x96F3B83D, 0, 32, 0, 100_000, 0, 2, 0, 0, 0, 0) + b"\0" * 100)
    cases.append((garbage, "2.0.0", ImageRejectedError, "truncated"))
    for image, version, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            svc.publish(image, "gateway", version, ACTOR)
    with pytest.raises(NotFoundError):
        svc.publish(_img(tmp_path, key, "3.0.0", 10), "nosuch", "3.0.0", ACTOR)

    # nothing but the first release was recorded or published
    with registry.session() as s:
        assert [r.version for r in s.scalars(select(FirmwareRelease))] == ["1.0.0"]
    assert [t.split("/")[1] for t in _targets(svc.repo, "gateway")] == ["1.0.0"]
    events = _events(registry)
    refusals = [e for e in events if e["status_id"] == 2]
    assert len(refusals) == len(cases) + 2  # + "no trusted key" + unknown product
    assert any("security counter" in e["message"] for e in refusals)
    assert any(e["message"].startswith("firmware gateway 1.0.0") for e in events)

    rel2 = svc.publish(_img(tmp_path, key, "1.1.0", 2), "gateway", "1.1.0", ACTOR)
    assert [r.version for r in svc.list_releases("gateway")] == ["1.0.0", "1.1.0"]
    assert rel2.security_counter == 2


def _targets(repo: Repository, product: str) -> list[str]:
    return sorted(repo.targets_of(product))


def test_products_and_keys(svc: FirmwareService) -> None:
    for bad in ("Bad Name", "root", "timestamp", "", "x" * 65, "cam-bin-01"):
        with pytest.raises(ValidationError):
            svc.add_product(bad, ACTOR)
    svc.add_product("sensor", ACTOR)
    with pytest.raises(ConflictError):
        svc.add_product("sensor", ACTOR)
    k = FileSigner(generate_key("ed25519"))
    out = svc.trust_key("sensor", public_pem(k.public_key()).encode(), ACTOR)
    with pytest.raises(ConflictError):
        svc.trust_key("sensor", public_pem(k.public_key()).encode(), ACTOR)
    assert [x.key_id for x in svc.list_keys("sensor")] == [out.key_id]
    svc.revoke_key("sensor", out.key_id[:12], ACTOR)
    assert svc.list_keys("sensor")[0].revoked
    assert svc.trusted_keys("sensor") == {}
    from fleetwarden.firmware.errors import SigningKeyError

    with pytest.raises(SigningKeyError):
        svc.trust_key("sensor", b"not a key", ACTOR)
