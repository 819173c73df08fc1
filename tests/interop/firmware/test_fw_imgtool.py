"""imgtool (MCUboot's signing tool, from PyPI) against fleetwarden, both directions."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fleetwarden.cli import main
from fleetwarden.firmware.errors import ImageRejectedError
from fleetwarden.firmware.image import ImageVersion, sign_image, verify_image
from fleetwarden.firmware.keys import FileSigner, read_public_key

pytestmark = pytest.mark.interop

IMGTOOL = shutil.which("imgtool") or str(Path(sys.executable).with_name("imgtool"))
ALGS = ["ecdsa-p256", "ed25519"]


def imgtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([IMGTOOL, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    p = tmp_path / "app.bin"
    p.write_bytes(os.urandom(50_000))
    return p


def _keypair(tmp_path: Path, alg: str, password: bool = False) -> tuple[Path, Path]:
    key, pub = tmp_path / f"{alg}.pem", tmp_path / f"{alg}.pub.pem"
    r = imgtool("keygen", "-k", str(key), "-t", alg)
    assert r.returncode == 0, r.stderr
    r = imgtool("getpub", "-k", str(key), "-e", "pem")
    assert r.returncode == 0, r.stderr
    pub.write_text(r.stdout)
    return key, pub


@pytest.mark.parametrize("alg", ALGS)
def test_imgtool_signed_verifies_in_fleetwarden(tmp_path: Path, raw: Path, alg: str) -> None:
    key, pub = _keypair(tmp_path, alg)
    img = tmp_path / "img.bin"
    r = imgtool(
        "sign",
        "-k",
        str(key),
        "--header-size",
        "0x200",
        "--pad-header",
        "--align",
        "4",
        "--version",
        "3.1.4+15",
        "-s",
        "42",
        "--slot-size",
        "0x40000",
        str(raw),
        str(img),
    )
    assert r.returncode == 0, r.stderr
    v = verify_image(img, [read_public_key(pub)])
    assert (str(v.version), v.security_counter, v.algorithm) == ("3.1.4+15", 42, alg)
    # ... and the CLI says so with exit 0
    with pytest.raises(SystemExit) as exc:
        main(["firmware", "verify", str(img), "--key", str(pub)])
    assert exc.value.code in (0, None)


@pytest.mark.parametrize("alg", ALGS)
def test_imgtool_full_pubkey_format(tmp_path: Path, raw: Path, alg: str) -> None:
    key, pub = _keypair(tmp_path, alg)
    img = tmp_path / "img.bin"
    r = imgtool(
        "sign",
        "-k",
        str(key),
        "--header-size",
        "0x200",
        "--pad-header",
        "--align",
        "4",
        "--public-key-format",
        "full",
        "--version",
        "1.0.0",
        "-s",
        "1",
        "--slot-size",
        "0x40000",
        str(raw),
        str(img),
    )
    assert r.returncode == 0, r.stderr
    assert verify_image(img, [read_public_key(pub)]).security_counter == 1
    # an embedded public key is an identifier, never a trust anchor
    (tmp_path / "o").mkdir()
    _, other = _keypair(tmp_path / "o", alg)
    with pytest.raises(ImageRejectedError, match="unknown key"):
        verify_image(img, [read_public_key(other)])


@pytest.mark.parametrize("alg", ALGS)
def test_fleetwarden_signed_passes_imgtool_verify(tmp_path: Path, raw: Path, alg: str) -> None:
    key, pub = _keypair(tmp_path, alg)
    img = tmp_path / "ours.bin"
    sign_image(raw, img, FileSigner.load(key), version=ImageVersion(2, 5, 9, 3), security_counter=8)
    for k in (key, pub):
        r = imgtool("verify", "-k", str(k), str(img))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "Image was correctly validated" in r.stdout
        assert "2.5.9+3" in r.stdout
    # imgtool dumpinfo sees the security counter in the protected area
    r = imgtool("dumpinfo", str(img))
    assert r.returncode == 0, r.stderr
    assert "SEC_CNT" in r.stdout


@pytest.mark.parametrize("alg", ALGS)
def test_encrypted_key_from_fleetwarden_keygen_works_in_imgtool(
    tmp_path: Path, raw: Path, alg: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`fleetwarden firmware keygen` writes encrypted PKCS#8; imgtool reads it too."""
    monkeypatch.setenv("FLEETWARDEN_FIRMWARE_KEY_PASSPHRASE", "correct horse battery")
    key, pub = tmp_path / "k.pem", tmp_path / "k.pub"
    with pytest.raises(SystemExit) as exc:
        main(["firmware", "keygen", "--type", alg, "--out", str(key), "--pub", str(pub)])
    assert exc.value.code in (0, None)
    assert (key.stat().st_mode & 0o777) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in key.read_bytes()
    img = tmp_path / "img.bin"
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "firmware",
                "sign",
                str(raw),
                "--key",
                str(key),
                "--version",
                "1.0.0",
                "--security-counter",
                "3",
                "--out",
                str(img),
            ]
        )
    assert exc.value.code in (0, None)
    r = imgtool("verify", "-k", str(pub), str(img))
    assert r.returncode == 0, r.stdout + r.stderr


def test_cli_verify_refusal_exit_code(
    tmp_path: Path, raw: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key, pub = _keypair(tmp_path, "ed25519")
    img = tmp_path / "img.bin"
    sign_image(raw, img, FileSigner.load(key), version=ImageVersion(1, 0, 0), security_counter=1)
    img.write_bytes(img.read_bytes()[:-3])
    with pytest.raises(SystemExit) as exc:
        main(["firmware", "verify", str(img), "--key", str(pub)])
    assert exc.value.code == 65
    assert "truncated" in capsys.readouterr().err


def test_wrong_passphrase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fleetwarden.firmware.errors import SigningKeyError
    from fleetwarden.firmware.keys import generate_key, write_encrypted_key

    p = tmp_path / "k.pem"
    write_encrypted_key(p, generate_key("ed25519"), b"right passphrase")
    monkeypatch.setenv("FLEETWARDEN_FIRMWARE_KEY_PASSPHRASE", "wrong passphrase")
    with pytest.raises(SigningKeyError, match="wrong passphrase"):
        FileSigner.load(p)
