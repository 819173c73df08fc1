"""End to end over real HTTP: the control plane (``serve``) publishes through TUF and
DDI; simulated MCUboot devices poll DDI, fetch with python-tuf's ngclient, verify,
install A/B, confirm and report; the rollout advances on their feedback.

The device certificate check belongs to the TLS layer (identity control); here the
authenticator is the small hook the DDI routes depend on, mapping a test header to a
device id, exactly where the verified certificate's identity will plug in.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetwarden.firmware.agent import Device, ddi_cycle
from fleetwarden.firmware.image import ImageVersion, sign_image
from fleetwarden.firmware.keys import FileSigner, generate_key, public_pem
from fleetwarden.firmware.rollout import RolloutService, Stage
from fleetwarden.firmware.service import FirmwareService
from fleetwarden.registry import Actor, Registry
from fleetwarden.registry.schemas import DeviceCreate
from fleetwarden.settings import Settings

ACTOR = Actor("cli:e2e")


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[dict[str, Any]]:
    import socket

    from fleetwarden.service import Context, serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(data_dir=tmp_path / "data", api_port=port)
    settings.data_dir.mkdir()
    reg = Registry.open(f"sqlite:///{tmp_path / 'reg.db'}")
    ready = threading.Event()
    ctxs: list[Context] = []

    def on_ready(ctx: Context) -> None:
        ctx.app.state.device_authenticator = lambda req: req.headers.get("x-test-device")
        ctxs.append(ctx)
        ready.set()

    loop = asyncio.new_event_loop()
    task: list[asyncio.Task[None]] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        task.append(loop.create_task(serve(settings, reg, on_ready=on_ready)))
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(task[0])

    th = threading.Thread(target=run, daemon=True)
    th.start()
    assert ready.wait(30)
    yield {
        "settings": settings,
        "registry": reg,
        "base": f"http://127.0.0.1:{port}",
        "ctx": ctxs[0],
    }
    loop.call_soon_threadsafe(task[0].cancel)
    th.join(15)
    reg.close()


def _image(tmp_path: Path, key: FileSigner, v: str, counter: int) -> Path:
    raw = tmp_path / f"raw-{v}"
    raw.write_bytes(os.urandom(20_000))
    out = tmp_path / f"fw-{v}.img"
    sign_image(raw, out, key, version=ImageVersion.parse(v), security_counter=counter)
    return out


def test_publish_rollout_devices_confirm(plane: dict[str, Any], tmp_path: Path) -> None:
    settings: Settings = plane["settings"]
    reg: Registry = plane["registry"]
    base: str = plane["base"]
    svc = FirmwareService(reg, settings)
    svc.repo.init(tmp_path / "rootkeys", passphrase=b"root passphrase")
    key = FileSigner(generate_key("ecdsa-p256"))
    svc.add_product("cam", ACTOR)
    svc.trust_key("cam", public_pem(key.public_key()).encode(), ACTOR)
    svc.publish(_image(tmp_path, key, "1.0.0", 1), "cam", "1.0.0", ACTOR)
    svc.publish(_image(tmp_path, key, "1.1.0", 2), "cam", "1.1.0", ACTOR)
    for d in ("cam-1", "cam-2", "cam-3"):
        reg.add_device(DeviceCreate(device_id=d), ACTOR)
    rs = RolloutService(reg)
    rs.create(
        "cam-1.1",
        "cam",
        "1.1.0",
        ACTOR,
        devices=["cam-1", "cam-2", "cam-3"],
        stages=[Stage.parse("devices:cam-1")],
        success_threshold=100,
        error_threshold=60,
    )

    pubfile = tmp_path / "fw.pub"
    pubfile.write_text(public_pem(key.public_key()))
    meta_url, tgt_url = f"{base}/tuf/metadata/", f"{base}/tuf/targets/"

    def device(name: str, counter: int = 0) -> tuple[Device, httpx.Client, str]:
        dev = Device(tmp_path / name)
        dev.provision(svc.repo.metadata_dir / "1.root.json", [pubfile], counter)
        client = httpx.Client(headers={"x-test-device": name}, timeout=10)
        return dev, client, f"{base}/DEFAULT/controller/v1/{name}"

    # no certificate, or a certificate for another device: refused
    assert httpx.get(f"{base}/DEFAULT/controller/v1/cam-1").status_code == 401
    assert (
        httpx.get(
            f"{base}/DEFAULT/controller/v1/cam-1", headers={"x-test-device": "cam-2"}
        ).status_code
        == 403
    )

    d1, c1, u1 = device("cam-1")
    d2, c2, u2 = device("cam-2")
    d3, c3, u3 = device("cam-3", counter=5)  # already runs something with counter 5
    assert ddi_cycle(d2, c2, u2, meta_url, tgt_url) == "idle"  # group 1 not started
    poll = c1.get(u1).json()
    assert poll["config"]["polling"]["sleep"] == "00:05:00"
    assert ddi_cycle(d1, c1, u1, meta_url, tgt_url) == "success", d1.last_error
    assert d1.running_version() == "1.1.0" and d1.state().security_counter == 2
    assert rs.get("cam-1.1")["current_group"] == 1
    assert reg.get_device("cam-1").firmware_version == "1.1.0"
    # cam-3 refuses the image: its security counter (2) is lower than the device's (5)
    assert ddi_cycle(d3, c3, u3, meta_url, tgt_url) == "failure"
    assert d3.running_version() is None
    # cam-2's application fails its self-test: trial image reverted, failure reported
    assert ddi_cycle(d2, c2, u2, meta_url, tgt_url, on_installed=lambda d: False) == "failure"
    assert d2.running_version() is None
    out = rs.get("cam-1.1")
    assert out["state"] == "paused" and out["groups"][1]["failed"] == 2

    # the artifact download route (what SWUpdate and other hawkBit clients use)
    rs.resume("cam-1.1", ACTOR)
    rs.record_feedback([])
    # cam-2 still has an open deployment? no: it reported failure; the link is gone
    assert "deploymentBase" not in c2.get(u2).json()["_links"]


def test_ddi_artifact_download_and_bad_feedback(plane: dict[str, Any], tmp_path: Path) -> None:
    settings: Settings = plane["settings"]
    reg: Registry = plane["registry"]
    base: str = plane["base"]
    svc = FirmwareService(reg, settings)
    svc.repo.init(tmp_path / "rootkeys", passphrase=b"root passphrase")
    key = FileSigner(generate_key("ed25519"))
    svc.add_product("hub", ACTOR)
    svc.trust_key("hub", public_pem(key.public_key()).encode(), ACTOR)
    img = _image(tmp_path, key, "2.0.0", 4)
    rel = svc.publish(img, "hub", "2.0.0", ACTOR)
    reg.add_device(DeviceCreate(device_id="hub-1"), ACTOR)
    RolloutService(reg).create("hub-2", "hub", "2.0.0", ACTOR, devices=["hub-1"])
    c = httpx.Client(headers={"x-test-device": "hub-1"}, timeout=10)
    link = c.get(f"{base}/DEFAULT/controller/v1/hub-1").json()["_links"]["deploymentBase"]["href"]
    dep = c.get(link).json()
    art = dep["deployment"]["chunks"][0]["artifacts"][0]
    assert art["hashes"]["sha256"] == rel.sha256 and art["size"] == img.stat().st_size
    import hashlib

    body = c.get(art["_links"]["download-http"]["href"]).content
    assert hashlib.sha1(body).hexdigest() == art["hashes"]["sha1"]
    assert body == img.read_bytes()
    part = c.get(art["_links"]["download"]["href"], headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == body[10:20]
    md5 = c.get(art["_links"]["md5sum"]["href"]).text
    assert md5.split()[0] == hashlib.md5(body).hexdigest()
    fb = link.split("?")[0] + "/feedback"
    assert c.post(fb, json={"status": {"execution": "bogus"}}).status_code == 422
    assert c.post(fb, content=b"{not json").status_code == 422
    wrong = fb.replace(f"/{dep['id']}/", "/999/")
    assert (
        c.post(
            wrong, json={"status": {"execution": "closed", "result": {"finished": "success"}}}
        ).status_code
        == 409
    )
    assert (
        c.get(art["_links"]["download"]["href"].replace(f"/{dep['id']}/", "/999/")).status_code
        == 404
    )
    assert c.get(f"{base}/OTHER/controller/v1/hub-1").status_code == 404
    assert (
        c.put(f"{base}/DEFAULT/controller/v1/hub-1/configData", json={"data": {}}).status_code
        == 200
    )
    ok = c.post(
        fb,
        json={
            "id": dep["id"],
            "status": {"execution": "closed", "result": {"finished": "success"}},
        },
    )
    assert ok.status_code == 200
    assert RolloutService(reg).get("hub-2")["state"] == "completed"
    # TUF metadata served statically by `up`
    assert c.get(f"{base}/tuf/metadata/timestamp.json").json()["signed"]["_type"] == "timestamp"
    _ = time
