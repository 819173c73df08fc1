"""The simulated MCUboot device: A/B slots, trial boot, revert, confirm, counters."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleetwarden.firmware.agent import Device, UpdateError
from fleetwarden.firmware.errors import ImageRejectedError
from fleetwarden.firmware.image import ImageVersion, sign_image
from fleetwarden.firmware.keys import FileSigner, generate_key, public_pem


def _img(tmp: Path, key: FileSigner, v: str, c: int) -> Path:
    raw = tmp / f"raw{v}"
    raw.write_bytes(os.urandom(1000))
    out = tmp / f"{v}.img"
    sign_image(raw, out, key, version=ImageVersion.parse(v), security_counter=c)
    return out


def test_ab_trial_revert_confirm(tmp_path: Path) -> None:
    key = FileSigner(generate_key("ed25519"))
    pub = tmp_path / "k.pub"
    pub.write_text(public_pem(key.public_key()))
    root = tmp_path / "root.json"
    root.write_text("{}")
    dev = Device(tmp_path / "dev")
    dev.provision(root, [pub], security_counter=2)
    with pytest.raises(UpdateError, match="nothing to confirm"):
        dev.confirm()
    with pytest.raises(ImageRejectedError, match="lower than the device's 2"):
        dev.install(_img(tmp_path, key, "0.9.0", 1))
    dev.install(_img(tmp_path, key, "1.0.0", 3))
    assert dev.state().pending == "b" and dev.running_version() is None
    assert dev.reboot() == "trial" and dev.running_version() == "1.0.0"
    with pytest.raises(UpdateError, match="on trial"):
        dev.install(_img(tmp_path, key, "1.1.0", 4))
    assert dev.reboot() == "reverted"  # not confirmed: back to slot a
    assert dev.state().active == "a" and dev.state().security_counter == 2
    dev.install(_img(tmp_path, key, "1.0.1", 3))
    dev.reboot()
    st = dev.confirm()
    assert st.active == "b" and st.security_counter == 3 and not st.trial
    assert dev.reboot() == "unchanged"
    other = FileSigner(generate_key("ed25519"))
    with pytest.raises(ImageRejectedError, match="unknown key"):
        dev.install(_img(tmp_path, other, "2.0.0", 9))
    # a slot tampered after install is caught when the bootloader re-verifies it
    dev.install(_img(tmp_path, key, "1.2.0", 3))
    slot = dev.path / "slot-a.bin"
    data = bytearray(slot.read_bytes())
    data[600] ^= 1
    slot.write_bytes(bytes(data))
    with pytest.raises(ImageRejectedError, match="SHA-256 mismatch"):
        dev.reboot()
