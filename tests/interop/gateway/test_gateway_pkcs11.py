"""A device whose private key never leaves a PKCS#11 token (SoftHSM2) connects to the
managed broker: the key pair is generated on the token with OpenSC pkcs11-tool, the
fleet CA certifies the exported public key, and mosquitto_pub signs the TLS handshake
through the OpenSSL pkcs11 engine (Debian libengine-pkcs11-openssl)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key
from gw_harness import Harness, needs_broker

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
ENGINE = Path("/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so")

pytestmark = [
    pytest.mark.interop,
    needs_broker,
    pytest.mark.skipif(
        not (Path(MODULE).exists() and ENGINE.exists() and shutil.which("pkcs11-tool")),
        reason="needs softhsm2, opensc and libengine-pkcs11-openssl (.ci/apt/gateway.txt)",
    ),
]


def test_device_key_in_softhsm_connects(harness: Harness, tmp_path: Path) -> None:
    h = harness
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}

    def run(*a):
        return subprocess.run(a, env=env, capture_output=True, text=True, timeout=30, check=True)  # noqa: E731

    run(
        "softhsm2-util",
        "--init-token",
        "--free",
        "--label",
        "fwdev",
        "--pin",
        "1234",
        "--so-pin",
        "5678",
    )
    p11 = ["pkcs11-tool", "--module", MODULE, "--token-label", "fwdev"]
    run(
        *p11,
        "--login",
        "--pin",
        "1234",
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--label",
        "tok-1",
        "--id",
        "01",
    )
    run(*p11, "--read-object", "--type", "pubkey", "--id", "01", "-o", str(tmp_path / "pub.der"))
    pub = load_der_public_key((tmp_path / "pub.der").read_bytes())
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    h.add_device("tok-1")
    issued = h.pki.device_for_public_key("tok-1", pub)
    h.reload()
    # the private key is not extractable: there is no key file anywhere
    assert issued.key is None and not issued.key_path.exists()
    uri = "pkcs11:token=fwdev;object=tok-1;type=private;pin-value=1234"
    # libmosquitto's tls_set checks that the "key file" exists before it looks at the
    # key form, so an empty placeholder named like the URI sits in the working
    # directory; the engine then loads the key by that URI from the token.
    (tmp_path / uri).write_bytes(b"")
    r = subprocess.run(
        [
            "mosquitto_pub",
            "-h",
            "127.0.0.1",
            "-p",
            str(h.port),
            "--cafile",
            str(h.pki.chain_path),
            "--cert",
            str(issued.cert_path),
            "--tls-engine",
            "pkcs11",
            "--keyform",
            "engine",
            "--key",
            uri,
            "-i",
            "tok-1",
            "-t",
            "devices/tok-1/telemetry",
            "-m",
            "from-the-token",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    h.wait_for(lambda e: e.device_uid == "tok-1" and "connected" in e.message)
