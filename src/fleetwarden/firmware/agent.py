"""The device side of OTA: TUF refresh, MCUboot verification, A/B install, confirm.

A simulated MCUboot device lives in a directory::

    state.json      active slot, pending slot, trial flag, stored security counter
    slot-a.bin      image in slot A
    slot-b.bin      image in slot B
    tuf/            trusted TUF metadata (provisioned with root.json)
    downloads/      targets fetched by python-tuf's ngclient
    keys/*.pem      public keys the bootloader trusts

Invariants (those of MCUboot's swap-with-revert):
- a new image is written only to the inactive slot and booted once in trial mode;
- an image is installed only if python-tuf accepted the target (signed metadata, length
  and hash) AND the MCUboot signature verifies with a device key AND its security counter
  is not lower than the device's stored counter;
- a trial image that is not confirmed before the next reboot is reverted;
- the stored security counter is raised only when an image is confirmed;
- success is reported only after confirmation, never after download or install.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fleetwarden._internal.files import atomic_write
from fleetwarden.firmware.errors import FirmwareError, ImageRejectedError
from fleetwarden.firmware.image import VerifiedImage, verify_image
from fleetwarden.firmware.keys import PublicKey, read_public_key


class UpdateError(FirmwareError):
    """The update could not be fetched, verified or installed."""


@dataclass
class SlotState:
    active: str = "a"
    pending: str | None = None
    trial: bool = False
    security_counter: int = 0
    versions: dict[str, str | None] | None = None
    counters: dict[str, int | None] | None = None

    def other(self) -> str:
        return "b" if self.active == "a" else "a"


class Device:
    """A simulated MCUboot device with two slots in a directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        #: reason of the last failed update (what was reported to the server)
        self.last_error: str | None = None

    @property
    def state_file(self) -> Path:
        return self.path / "state.json"

    def state(self) -> SlotState:
        if not self.state_file.exists():
            return SlotState(versions={"a": None, "b": None}, counters={"a": None, "b": None})
        return SlotState(**json.loads(self.state_file.read_text()))

    def _save(self, st: SlotState) -> None:
        atomic_write(self.state_file, json.dumps(asdict(st), indent=1).encode())

    def trusted_keys(self) -> list[PublicKey]:
        keys = [read_public_key(p) for p in sorted((self.path / "keys").glob("*.pem"))]
        if not keys:
            raise UpdateError(f"no trusted firmware keys in {self.path / 'keys'}")
        return keys

    def provision(self, root_json: Path, keys: list[Path], security_counter: int = 0) -> None:
        (self.path / "tuf").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root_json, self.path / "tuf" / "root.json")
        (self.path / "keys").mkdir(parents=True, exist_ok=True)
        for k in keys:
            shutil.copyfile(k, self.path / "keys" / f"{k.stem}.pem")
        st = self.state()
        st.security_counter = security_counter
        self._save(st)

    def verify(self, image: Path) -> VerifiedImage:
        """What the bootloader checks: signature by a device key, counter not lower."""
        v = verify_image(image, self.trusted_keys())
        counter = v.security_counter if v.security_counter is not None else 0
        st = self.state()
        if counter < st.security_counter:
            raise ImageRejectedError(
                f"image rejected: security counter {counter} is lower than the device's "
                f"{st.security_counter} (downgrade)"
            )
        return v

    def install(self, image: Path) -> VerifiedImage:
        """Verify and write into the inactive slot, marked for a trial boot."""
        v = self.verify(image)
        st = self.state()
        if st.trial:
            raise UpdateError("the running image is still on trial: confirm or reboot first")
        slot = st.other()
        tmp = self.path / f".slot-{slot}.partial"
        shutil.copyfile(image, tmp)
        os.replace(tmp, self.path / f"slot-{slot}.bin")
        st.pending = slot
        assert st.versions is not None
        assert st.counters is not None
        st.versions[slot] = str(v.version)
        st.counters[slot] = v.security_counter
        self._save(st)
        return v

    def reboot(self) -> str:
        """Simulated reset: boot the pending image on trial, or revert an unconfirmed one."""
        st = self.state()
        if st.pending is not None:
            # MCUboot re-verifies the slot before swapping; so do we.
            self.verify(self.path / f"slot-{st.pending}.bin")
            st.active, st.pending, st.trial = st.pending, None, True
            self._save(st)
            return "trial"
        if st.trial:
            st.active, st.trial = st.other(), False
            self._save(st)
            return "reverted"
        return "unchanged"

    def confirm(self) -> SlotState:
        """The application is healthy: make the trial image permanent."""
        st = self.state()
        if not st.trial:
            raise UpdateError("nothing to confirm: no image is on trial")
        st.trial = False
        assert st.counters is not None
        counter = st.counters.get(st.active) or 0
        st.security_counter = max(st.security_counter, counter)
        self._save(st)
        return st

    def running_version(self) -> str | None:
        st = self.state()
        return (st.versions or {}).get(st.active)


def fetch_target(
    device: Device, metadata_url: str, targets_url: str, name: str
) -> tuple[Path, dict[str, Any]]:
    """Refresh TUF metadata with ngclient and download ``name``; return path and custom."""
    from tuf.api.exceptions import DownloadError, RepositoryError
    from tuf.ngclient import Updater

    meta_dir = device.path / "tuf"
    dl = device.path / "downloads"
    dl.mkdir(parents=True, exist_ok=True)
    try:
        up = Updater(
            metadata_dir=str(meta_dir),
            metadata_base_url=metadata_url,
            target_dir=str(dl),
            target_base_url=targets_url,
            bootstrap=None,
        )
        up.refresh()
        info = up.get_targetinfo(name)
        if info is None:
            raise UpdateError(f"target {name!r} is not in the TUF repository")
        path = up.find_cached_target(info) or up.download_target(info)
    except (RepositoryError, DownloadError, OSError) as exc:
        raise UpdateError(f"TUF refused the update: {type(exc).__name__}: {exc}") from exc
    custom = info.unrecognized_fields.get("custom", {})
    return Path(path), custom if isinstance(custom, dict) else {}


def update(device: Device, metadata_url: str, targets_url: str, name: str) -> VerifiedImage:
    """Fetch through TUF, cross-check TUF custom metadata, verify and install."""
    path, custom = fetch_target(device, metadata_url, targets_url, name)
    v = device.verify(path)
    if custom.get("version") not in (None, str(v.version)) or custom.get(
        "security_counter"
    ) not in (None, v.security_counter):
        raise UpdateError("TUF metadata and the image header disagree on version or counter")
    return device.install(path)


def _feedback(
    client: Any, url: str, action: str, execution: str, finished: str, details: list[str]
) -> None:
    r = client.post(
        url,
        json={
            "id": action,
            "status": {
                "execution": execution,
                "result": {"finished": finished},
                "details": details,
            },
        },
    )
    if r.status_code != 200:
        raise UpdateError(f"DDI feedback refused: HTTP {r.status_code} {r.text[:200]}")


def ddi_cycle(
    device: Device,
    client: Any,
    controller_url: str,
    metadata_url: str,
    targets_url: str,
    *,
    on_installed: Any = None,
) -> str:
    """One hawkBit polling cycle: poll, install through TUF, reboot, confirm, report.

    ``client`` is an ``httpx.Client`` holding the device's TLS client certificate.
    ``on_installed`` (tests) may simulate a failing application before confirmation.
    Returns ``idle``, ``success`` or ``failure``.
    """
    r = client.get(controller_url)
    if r.status_code != 200:
        raise UpdateError(f"DDI poll refused: HTTP {r.status_code} {r.text[:200]}")
    link = r.json().get("_links", {}).get("deploymentBase", {}).get("href")
    if not link:
        return "idle"
    base = client.get(link)
    if base.status_code != 200:
        raise UpdateError(f"deploymentBase refused: HTTP {base.status_code}")
    dep = base.json()
    action = str(dep["id"])
    fb = link.split("?", 1)[0] + "/feedback"
    meta = {m["key"]: m["value"] for m in dep["deployment"]["chunks"][0].get("metadata", [])}
    target = meta.get("tuf_target")
    if not target:
        _feedback(client, fb, action, "closed", "failure", ["no tuf_target in the deployment"])
        return "failure"
    _feedback(client, fb, action, "proceeding", "none", ["downloading through TUF"])
    try:
        v = update(device, metadata_url, targets_url, target)
        if device.reboot() != "trial":
            raise UpdateError("the new image did not boot")
        if on_installed is not None and not on_installed(device):
            device.reboot()  # unconfirmed trial image: the bootloader reverts
            raise UpdateError("application self-test failed; reverted")
        st = device.confirm()
    except FirmwareError as exc:
        _feedback(client, fb, action, "closed", "failure", [str(exc)[:200]])
        device.last_error = str(exc)
        return "failure"
    _feedback(
        client,
        fb,
        action,
        "closed",
        "success",
        [f"running {v.version}, security counter {st.security_counter}"],
    )
    return "success"
