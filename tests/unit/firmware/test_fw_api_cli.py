"""The firmware admin API (tokens, upload publish, rollouts) and the CLI commands."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fleetwarden.api import create_app
from fleetwarden.cli import main
from fleetwarden.firmware.image import ImageVersion, sign_image
from fleetwarden.firmware.keys import FileSigner, generate_key, public_pem
from fleetwarden.firmware.service import FirmwareService
from fleetwarden.registry import Actor, Registry
from fleetwarden.registry.schemas import DeviceCreate, Role, TokenCreate
from fleetwarden.settings import load_settings


@pytest.fixture
def client(registry: Registry, tmp_path: Path) -> Iterator[TestClient]:
    settings = load_settings(tmp_path)
    FirmwareService(registry, settings).repo.init(tmp_path / "rk", passphrase=b"root passphrase")
    with TestClient(create_app(settings, registry)) as c:
        yield c


def _h(registry: Registry, role: Role) -> dict[str, str]:
    tok = registry.create_token(TokenCreate(name=f"t-{role.value}", role=role), Actor("t"))
    return {"Authorization": f"Bearer {tok.token}"}


def _img(tmp: Path, key: FileSigner, v: str, c: int) -> bytes:
    raw = tmp / f"raw{v}"
    raw.write_bytes(os.urandom(2000))
    out = tmp / f"img{v}"
    sign_image(raw, out, key, version=ImageVersion.parse(v), security_counter=c)
    return out.read_bytes()


def test_admin_api(client: TestClient, registry: Registry, tmp_path: Path) -> None:
    w, r = _h(registry, Role.OPERATOR), _h(registry, Role.AUDITOR)
    assert client.get("/v1/firmware/products").status_code == 401
    assert client.post("/v1/firmware/products", json={"name": "cam"}, headers=r).status_code == 403
    assert client.post("/v1/firmware/products", json={"name": "cam"}, headers=w).status_code == 201
    key = FileSigner(generate_key("ed25519"))
    pem = public_pem(key.public_key())
    k = client.post("/v1/firmware/products/cam/keys", json={"public_key_pem": pem}, headers=w)
    assert k.status_code == 201
    bad = client.post("/v1/firmware/products/cam/keys", json={"public_key_pem": "junk"}, headers=w)
    assert bad.status_code == 401 or bad.status_code == 400 or bad.status_code == 422
    up = client.post(
        "/v1/firmware/releases?product=cam&version=1.0.0",
        content=_img(tmp_path, key, "1.0.0", 1),
        headers={**w, "content-type": "application/octet-stream"},
    )
    assert up.status_code == 201, up.text
    assert up.json()["target_name"] == "cam/1.0.0/cam-1.0.0.bin"
    down = client.post(
        "/v1/firmware/releases?product=cam&version=0.9.0",
        content=_img(tmp_path, key, "0.9.0", 5),
        headers={**w, "content-type": "application/octet-stream"},
    )
    assert down.status_code == 409 and "not higher" in down.json()["detail"]
    junk = client.post(
        "/v1/firmware/releases?product=cam&version=2.0.0", content=b"junk", headers=w
    )
    assert junk.status_code == 422 and "truncated" in junk.json()["detail"]
    rels = client.get("/v1/firmware/products/cam/releases", headers=r).json()
    assert [x["version"] for x in rels] == ["1.0.0"]
    registry.add_device(DeviceCreate(device_id="c1"), Actor("t"))
    ro = client.post(
        "/v1/firmware/rollouts",
        json={"name": "r", "product": "cam", "version": "1.0.0", "devices": ["c1"]},
        headers=w,
    )
    assert ro.status_code == 201, ro.text
    assert client.post("/v1/firmware/rollouts/r/pause", headers=w).json()["state"] == "paused"
    assert client.post("/v1/firmware/rollouts/r/pause", headers=w).status_code == 409
    assert client.post("/v1/firmware/rollouts/r/resume", headers=w).json()["state"] == "running"
    got = client.get("/v1/firmware/rollouts/r", headers=r).json()
    assert got["deployments"] == {"scheduled": 1}
    assert client.post("/v1/firmware/rollouts/r/cancel", headers=w).json()["state"] == "cancelled"
    assert client.get("/v1/firmware/rollouts/nope", headers=r).status_code == 404
    # DDI without an authenticator configured: every device call is refused
    assert client.get("/DEFAULT/controller/v1/c1").status_code == 401


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_flow(
    capsys: pytest.CaptureFixture[str],
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLEETWARDEN_FIRMWARE_KEY_PASSPHRASE", "a long passphrase")
    assert run(capsys, "init")[0] == 0
    assert run(capsys, "firmware", "tuf", "init")[0] == 0
    key, pub = tmp_path / "k.pem", tmp_path / "k.pub"
    assert run(capsys, "firmware", "keygen", "--out", str(key), "--pub", str(pub))[0] == 0
    code, _, err = run(capsys, "firmware", "keygen", "--out", str(key))
    assert code == 77 and "refusing to overwrite" in err
    assert run(capsys, "firmware", "product", "add", "gw")[0] == 0
    assert run(capsys, "firmware", "product", "trust-key", "gw", str(pub))[0] == 0
    raw = tmp_path / "raw"
    raw.write_bytes(os.urandom(3000))
    for v, c in (("1.0.0", 1), ("1.1.0", 2)):
        img = tmp_path / f"{v}.img"
        assert (
            run(
                capsys,
                "firmware",
                "sign",
                str(raw),
                "--key",
                str(key),
                "--version",
                v,
                "--security-counter",
                str(c),
                "--out",
                str(img),
            )[0]
            == 0
        )
        code, out, err = run(
            capsys, "firmware", "publish", str(img), "--product", "gw", "--version", v
        )
        assert code == 0, err
    code, _, err = run(
        capsys, "firmware", "publish", str(img), "--product", "gw", "--version", "1.1.0"
    )
    assert code == 65 and "not higher" in err and "Traceback" not in err
    code, out, _ = run(capsys, "firmware", "releases", "gw", "--json")
    assert [r["version"] for r in json.loads(out)] == ["1.0.0", "1.1.0"]
    assert run(capsys, "device", "add", "g1")[0] == 0
    assert run(capsys, "device", "add", "g2")[0] == 0
    code, out, err = run(
        capsys,
        "firmware",
        "rollout",
        "create",
        "ro",
        "--product",
        "gw",
        "--version",
        "1.1.0",
        "--device",
        "g1",
        "--device",
        "g2",
        "--stage",
        "devices:g1",
        "--success-threshold",
        "100",
        "--json",
    )
    assert code == 0, err
    assert json.loads(out)["groups"][0]["size"] == 1
    assert run(capsys, "firmware", "rollout", "report", "g1", "success")[0] == 0
    code, out, _ = run(capsys, "firmware", "rollout", "show", "ro", "--json")
    assert json.loads(out)["current_group"] == 1
    assert run(capsys, "firmware", "rollout", "pause", "ro")[0] == 0
    code, _, err = run(capsys, "firmware", "rollout", "pause", "ro")
    assert code != 0 and "cannot paused" in err or "paused" in err
    code, out, err = run(capsys, "firmware", "rollout", "rollback", "ro", "--json")
    assert code == 0, err
    assert json.loads(out)["version"] == "1.0.0"
    assert run(capsys, "firmware", "tuf", "refresh")[0] == 0
    code, out, _ = run(capsys, "firmware", "verify", str(img), "--key", str(pub), "--json")
    assert json.loads(out)["security_counter"] == 2
