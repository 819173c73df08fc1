"""SWUpdate's suricatta (Debian ``swupdate``), a stock hawkBit DDI client, against
fleetwarden's DDI API: it polls the controller base, reads the deploymentBase, downloads
the artifact and posts feedback.

The artifact is an MCUboot image, not an SWUpdate ``.swu`` (CPIO) container, so
SWUpdate's installer refuses it and SWUpdate must say so through DDI feedback. What this
proves is the protocol conversation with an unmodified hawkBit client (polling interval,
deploymentBase, artifact links and hashes, download, feedback), end to end; a successful
SWUpdate install would need fleetwarden to publish .swu containers, which it does not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from fleetwarden.firmware.image import ImageVersion, sign_image
from fleetwarden.firmware.keys import FileSigner, generate_key, public_pem
from fleetwarden.firmware.models import FirmwareDeployment
from fleetwarden.firmware.rollout import RolloutService
from fleetwarden.firmware.service import FirmwareService
from fleetwarden.registry import Actor, Registry
from fleetwarden.registry.schemas import DeviceCreate

pytestmark = [pytest.mark.interop, pytest.mark.slow]
ACTOR = Actor("cli:swupdate-test")


def _cert(tmp: Path) -> Path:
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(tmp / "k.pem"),
            "-out",
            str(tmp / "c.pem"),
            "-days",
            "2",
            "-subj",
            "/CN=swu-signer",
            "-addext",
            "extendedKeyUsage=emailProtection",
        ],
        check=True,
        capture_output=True,
    )
    return tmp / "c.pem"


def test_suricatta_polls_downloads_and_reports(
    plane: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("swupdate") is None:
        pytest.skip("swupdate is not installed (Debian package swupdate)")
    reg: Registry = plane["registry"]
    plane["settings"].firmware.ddi_polling_interval = "00:00:01"  # hawkBit "sleep"
    svc = FirmwareService(reg, plane["settings"])
    svc.repo.init(tmp_path / "rootkeys", passphrase=b"root passphrase")
    key = FileSigner(generate_key("ecdsa-p256"))
    svc.add_product("edge", ACTOR)
    svc.trust_key("edge", public_pem(key.public_key()).encode(), ACTOR)
    raw = tmp_path / "raw.bin"
    raw.write_bytes(os.urandom(30_000))
    img = tmp_path / "edge.img"
    sign_image(raw, img, key, version=ImageVersion(1, 0, 0), security_counter=1)
    # named .swu so SWUpdate downloads it (it skips other artifacts)
    svc.publish(img, "edge", "1.0.0", ACTOR, filename="edge-1.0.0.swu")
    reg.add_device(DeviceCreate(device_id="swu-1"), ACTOR)
    rs = RolloutService(reg)
    rs.create("edge-1", "edge", "1.0.0", ACTOR, devices=["swu-1"])

    # spy on the artifact route to see the download from the server side
    from fleetwarden.firmware import ddi

    downloads: list[str] = []
    real = ddi._artifact

    def spy(request: Any, device: str, module_id: int, filename: str) -> Any:
        downloads.append(f"{device}:{module_id}:{filename}")
        return real(request, device, module_id, filename)

    monkeypatch.setattr(ddi, "_artifact", spy)

    run = tmp_path / "swu"
    run.mkdir()
    cfg = run / "swupdate.cfg"
    port = plane["base"].rsplit(":", 1)[1]
    cfg.write_text("globals: { loglevel = 6; };\n")
    env = {**os.environ, "TMPDIR": str(run), "RUNTIME_DIRECTORY": str(run)}
    # SWUpdate keeps its update state in the bootloader environment; give it a GRUB
    # environment block of its own by bind-mounting a private /boot in a mount namespace
    # (nothing on the host is touched).
    boot = run / "boot"
    (boot / "grub").mkdir(parents=True)
    block = b"# GRUB Environment Block\nustate=0\n"
    (boot / "grub" / "grubenv").write_bytes(block + b"#" * (1024 - len(block)))
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs a private mount namespace (unshare -m) for the bootloader env")
    log = (run / "swupdate.log").open("wb")
    proc = subprocess.Popen(
        [
            "unshare",
            "-m",
            "sh",
            "-c",
            'mount --bind "$0" /boot && exec "$@"',
            str(boot),
            *os.environ.get("SWU_WRAP", "").split(),
            "swupdate",
            "-v",
            "-B",
            "grub",
            "-f",
            str(cfg),
            "-k",
            str(_cert(run)),
            "-u",
            f"-t DEFAULT -u http://127.0.0.1:{port} -i swu-1 -p 1 -r 1 -k swu-1",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=run,
    )
    try:
        deadline = time.monotonic() + float(os.environ.get("SWU_WAIT", "60"))
        state = None
        while time.monotonic() < deadline and proc.poll() is None:
            with reg.session() as s:
                dep = s.scalar(
                    select(FirmwareDeployment).where(FirmwareDeployment.device_id == "swu-1")
                )
                state, detail = dep.state, dep.detail  # type: ignore[union-attr]
            if state in {"success", "failure"}:
                break
            time.sleep(0.5)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    out = (run / "swupdate.log").read_text(errors="replace")
    assert state == "failure", out[-3000:]
    assert rs.get("edge-1")["groups"][0]["failed"] == 1
    # SWUpdate downloaded the artifact through the DDI link, handed it to its installer
    # (which wants a CPIO .swu container) and reported the installer's error over DDI
    assert downloads and set(downloads) == {"swu-1:1:edge-1.0.0.swu"}, out[-3000:]
    # the installer's errors reach the details only when SWUpdate's IPC delivers them
    # before it posts the feedback; the final verdict is always there
    assert detail is not None and ".swu" in detail, detail
