"""Signing keys in a PKCS#11 token (SoftHSM2) and through an external signer command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetwarden.cli import main
from fleetwarden.firmware.errors import SigningKeyError
from fleetwarden.firmware.image import ImageVersion, sign_image, verify_image
from fleetwarden.firmware.keys import (
    ExternalSigner,
    FileSigner,
    Pkcs11Signer,
    generate_key,
    public_pem,
    write_encrypted_key,
)

pytestmark = pytest.mark.interop
MODULE = "/usr/lib/softhsm/libsofthsm2.so"
IMGTOOL = shutil.which("imgtool") or str(Path(sys.executable).with_name("imgtool"))


@pytest.fixture(scope="module")
def _token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # SoftHSM2 reads SOFTHSM2_CONF once per process (python-pkcs11 caches the library),
    # so one token directory serves the whole module.
    if not Path(MODULE).exists() or shutil.which("softhsm2-util") is None:
        pytest.skip("SoftHSM2 is not installed (Debian package softhsm2)")
    tmp_path = tmp_path_factory.mktemp("softhsm")
    tokdir = tmp_path / "tokens"
    tokdir.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokdir}\nobjectstore.backend = file\n")
    old = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            "fwsign",
            "--so-pin",
            "5678",
            "--pin",
            "1234",
        ],
        check=True,
        capture_output=True,
    )
    import pkcs11
    from pkcs11 import Attribute, KeyType
    from pkcs11.util.ec import encode_named_curve_parameters

    lib = pkcs11.lib(MODULE)
    tok = lib.get_token(token_label="fwsign")
    with tok.open(rw=True, user_pin="1234") as s:
        params = s.create_domain_parameters(
            KeyType.EC,
            {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
            local=True,
        )
        params.generate_keypair(store=True, label="p256")
        ed = s.create_domain_parameters(
            KeyType.EC_EDWARDS,
            {Attribute.EC_PARAMS: encode_named_curve_parameters("1.3.101.112")},
            local=True,
        )
        ed.generate_keypair(store=True, label="ed25519")
    yield "fwsign"
    if old is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = old


@pytest.fixture
def token(_token: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("FLEETWARDEN_FIRMWARE_PKCS11_PIN", "1234")
    return _token


@pytest.mark.parametrize("label", ["p256", "ed25519"])
def test_pkcs11_signing_interop(token: str, tmp_path: Path, label: str) -> None:
    signer = Pkcs11Signer(f"pkcs11:token={token};object={label}")
    raw = tmp_path / "raw.bin"
    raw.write_bytes(os.urandom(10_000))
    img = tmp_path / "img.bin"
    sign_image(raw, img, signer, version=ImageVersion(1, 1, 0), security_counter=2)
    assert verify_image(img, [signer.public_key()]).security_counter == 2
    pub = tmp_path / "pub.pem"
    pub.write_text(public_pem(signer.public_key()))
    r = subprocess.run(
        [IMGTOOL, "verify", "-k", str(pub), str(img)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    signer.close()


def test_pkcs11_cli_and_refusals(
    token: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = tmp_path / "raw.bin"
    raw.write_bytes(b"x" * 1000)
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "firmware",
                "sign",
                str(raw),
                "--key",
                f"pkcs11:token={token};object=p256",
                "--version",
                "1.0.0",
                "--security-counter",
                "1",
                "--out",
                str(tmp_path / "i.bin"),
            ]
        )
    assert exc.value.code in (0, None)
    with pytest.raises(SigningKeyError):
        Pkcs11Signer(f"pkcs11:token={token};object=missing")
    monkeypatch.setenv("FLEETWARDEN_FIRMWARE_PKCS11_PIN", "0000")
    with pytest.raises(SigningKeyError):
        Pkcs11Signer(f"pkcs11:token={token};object=p256")


@pytest.mark.parametrize("alg", ["ecdsa-p256", "ed25519"])
def test_external_signer(tmp_path: Path, alg: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A separate process holds the key: message on stdin, signature on stdout."""
    key = generate_key(alg)  # type: ignore[arg-type]
    keyfile = tmp_path / "remote.pem"
    write_encrypted_key(keyfile, key, b"remote-secret")
    script = tmp_path / "signer.py"
    script.write_text(
        textwrap.dedent(f"""
        import os, sys
        os.environ["FLEETWARDEN_FIRMWARE_KEY_PASSPHRASE"] = "remote-secret"
        from pathlib import Path
        from fleetwarden.firmware.keys import FileSigner
        sys.stdout.buffer.write(FileSigner.load(Path({str(keyfile)!r})).sign(sys.stdin.buffer.read()))
    """)
    )
    pub = tmp_path / "pub.pem"
    pub.write_text(public_pem(key.public_key()))
    raw = tmp_path / "raw.bin"
    raw.write_bytes(os.urandom(5000))
    img = tmp_path / "img.bin"
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "firmware",
                "sign",
                str(raw),
                "--key",
                f"exec:{sys.executable} {script}",
                "--pub",
                str(pub),
                "--version",
                "4.0.0",
                "--security-counter",
                "9",
                "--out",
                str(img),
            ]
        )
    assert exc.value.code in (0, None)
    assert verify_image(img, [key.public_key()]).version == ImageVersion(4, 0, 0)
    # a signer that fails or returns garbage never yields an image
    bad = ExternalSigner(f"{sys.executable} -c 'print(\"nope\")'", key.public_key())
    with pytest.raises(SigningKeyError, match="does not verify"):
        sign_image(
            raw, tmp_path / "bad.bin", bad, version=ImageVersion(1, 0, 0), security_counter=1
        )
    assert not (tmp_path / "bad.bin").exists()
    failing = ExternalSigner(f"{sys.executable} -c 'import sys; sys.exit(3)'", key.public_key())
    with pytest.raises(SigningKeyError, match="exited 3"):
        failing.sign(b"\0" * 32)
    assert FileSigner  # imported for the script's sake
