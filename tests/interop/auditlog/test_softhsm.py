"""Checkpoints signed inside a PKCS#11 token (SoftHSM2 via python-pkcs11)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from fleetwarden.auditlog.keys import Pkcs11Signer, generate_token_key
from fleetwarden.auditlog.note import Checkpoint, sign_note, verifier_for, verify_note

MODULE = next(
    (
        p
        for p in (
            "/usr/lib/softhsm/libsofthsm2.so",
            "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        )
        if Path(p).exists()
    ),
    None,
)
pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        MODULE is None or shutil.which("softhsm2-util") is None, reason="SoftHSM2 not installed"
    ),
]


def test_token_signs_checkpoints_verifiable_with_its_public_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            "fwaudit",
            "--pin",
            "1234",
            "--so-pin",
            "5678",
        ],
        check=True,
        capture_output=True,
    )
    assert MODULE is not None
    generate_token_key(MODULE, "fwaudit", "ckpt", "1234")
    signer = Pkcs11Signer(
        name="fleet-audit", module=MODULE, token_label="fwaudit", key_label="ckpt", pin="1234"
    )
    assert len(signer.public_key()) == 32
    text = sign_note(Checkpoint("o", 7, b"\x02" * 32).body(), signer).text()
    got = verify_note(text, [verifier_for(signer)])
    assert got.checkpoint.size == 7 and got.signed_by == ("fleet-audit",)
    wrong_pin = Pkcs11Signer(
        name="fleet-audit", module=MODULE, token_label="fwaudit", key_label="ckpt", pin="0000"
    )
    from fleetwarden.auditlog.errors import SigningKeyError

    with pytest.raises(SigningKeyError):
        wrong_pin.sign(b"x")
