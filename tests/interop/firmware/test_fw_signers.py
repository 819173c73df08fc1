"""Signing keys in a PKCS#11 token (SoftHSM2) and through an external signer command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fleetwarden.cli import main
from fleetwarden.firmware.errors import SigningKeyError
from fleetwarden.firmware.image import ImageVersion, sign_image, verify_image
from fleetwarden.firmware.keys import (
    ExternalSigner,
    FileSigner,
    generate_key,
    public_pem,
    write_encrypted_key,
)

pytestmark = pytest.mark.interop
MODULE = "/usr/lib/softhsm/libsofthsm2.so"
IMGTOOL = shutil.which("imgtool") or str(Path(sys.executable).with_name("imgtool"))


KEYGEN = """
import pkcs11
from pkcs11 import Attribute, KeyType
from pkcs11.util.ec import encode_named_curve_parameters

tok = pkcs11.lib("{module}").get_token(token_label="fwsign")
with tok.open(rw=True, user_pin="1234") as s:
    for label, kt, curve in (("p256", KeyType.EC, "secp256r1"),
                             ("ed25519", KeyType.EC_EDWARDS, "1.3.101.112")):
        params = s.create_domain_parameters(
            kt, {{Attribute.EC_PARAMS: encode_named_curve_parameters(curve)}}, local=True
        )
        params.generate_keypair(store=True, label=label)
"""

PUBKEY = """
import sys
from fleetwarden.firmware.keys import Pkcs11Signer, public_pem
sys.stdout.write(public_pem(Pkcs11Signer(sys.argv[1]).public_key()))
"""


@pytest.fixture(scope="module")
def token_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A SoftHSM2 token with a P-256 and an Ed25519 key.

    Everything that loads the PKCS#11 library runs in a child process: SoftHSM2 reads
    SOFTHSM2_CONF once per process, and other tests in this process may have loaded it
    with their own token directory.
    """
    if not Path(MODULE).exists() or shutil.which("softhsm2-util") is None:
        pytest.skip("SoftHSM2 is not installed (Debian package softhsm2)")
    tmp = tmp_path_factory.mktemp("softhsm")
    (tmp / "tokens").mkdir()
    conf = tmp / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp / 'tokens'}\nobjectstore.backend = file\n")
    env = {
        **os.environ,
        "SOFTHSM2_CONF": str(conf),
        "FLEETWARDEN_FIRMWARE_PKCS11_PIN": "1234",
    }
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
        env=env,
    )
    subprocess.run(
        [sys.executable, "-c", KEYGEN.format(module=MODULE)],
        check=True,
        capture_output=True,
        env=env,
    )
    return env


def _fw(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetwarden", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.mark.parametrize("label", ["p256", "ed25519"])
def test_pkcs11_signing_interop(token_env: dict[str, str], tmp_path: Path, label: str) -> None:
    uri = f"pkcs11:token=fwsign;object={label}"
    raw = tmp_path / "raw.bin"
    raw.write_bytes(os.urandom(10_000))
    img = tmp_path / "img.bin"
    r = _fw(
        token_env,
        "firmware",
        "sign",
        str(raw),
        "--key",
        uri,
        "--version",
        "1.1.0",
        "--security-counter",
        "2",
        "--out",
        str(img),
    )
    assert r.returncode == 0, r.stderr
    pub = tmp_path / "pub.pem"
    out = subprocess.run(
        [sys.executable, "-c", PUBKEY, uri],
        capture_output=True,
        text=True,
        env=token_env,
        check=True,
    )
    pub.write_text(out.stdout)
    from fleetwarden.firmware.keys import read_public_key

    v = verify_image(img, [read_public_key(pub)])
    assert v.security_counter == 2
    assert v.algorithm == ("ed25519" if label == "ed25519" else "ecdsa-p256")
    r2 = subprocess.run(
        [IMGTOOL, "verify", "-k", str(pub), str(img)], capture_output=True, text=True
    )
    assert r2.returncode == 0, r2.stdout + r2.stderr


def test_pkcs11_refusals(token_env: dict[str, str], tmp_path: Path) -> None:
    raw = tmp_path / "raw.bin"
    raw.write_bytes(b"x" * 1000)
    args = ["--version", "1.0.0", "--security-counter", "1", "--out", str(tmp_path / "i.bin")]
    r = _fw(
        token_env,
        "firmware",
        "sign",
        str(raw),
        "--key",
        "pkcs11:token=fwsign;object=missing",
        *args,
    )
    assert r.returncode == 77 and "missing" in r.stderr and "Traceback" not in r.stderr
    bad_pin = {**token_env, "FLEETWARDEN_FIRMWARE_PKCS11_PIN": "0000"}
    r = _fw(
        bad_pin, "firmware", "sign", str(raw), "--key", "pkcs11:token=fwsign;object=p256", *args
    )
    assert r.returncode == 77 and "Traceback" not in r.stderr
    assert "1234" not in r.stderr and "0000" not in r.stderr  # PINs never echoed
    no_pin = {k: v for k, v in token_env.items() if k != "FLEETWARDEN_FIRMWARE_PKCS11_PIN"}
    r = _fw(no_pin, "firmware", "sign", str(raw), "--key", "pkcs11:token=fwsign;object=p256", *args)
    assert r.returncode == 77 and "PIN" in r.stderr
    assert not (tmp_path / "i.bin").exists()


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
