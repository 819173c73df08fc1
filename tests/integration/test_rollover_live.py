"""Issuing-CA rollover while `fleetwarden up` runs, as real processes on a fresh data
directory (no `init` first): `fleetwarden ca rollover` in another process; the running
service switches to the new issuing CA (EST issues from it, `cacerts` returns both,
mTLS accepts certificates of both), the managed Mosquitto broker accepts devices of the
old and of the new issuing CA (mosquitto_pub sends its leaf only) and refuses the
revoked ones of both, and `openssl verify -crl_check_all` with the CRLs fetched from
their distribution points agrees."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("mosquitto_pub") is None
        or not Path("/usr/sbin/mosquitto").exists()
        or shutil.which("openssl") is None,
        reason="needs mosquitto, mosquitto-clients and openssl (.ci/apt/gateway.txt)",
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _csr(device: str) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device)]))
        .sign(key, hashes.SHA256())
    )
    return key, base64.b64encode(csr.public_bytes(serialization.Encoding.DER))


def _save(d: Path, name: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    (d / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def test_rollover_while_up_runs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWARDEN_")}
    env["FLEETWARDEN_DATA_DIR"] = str(data)
    crl_port = _free_port()
    env["FLEETWARDEN_IDENTITY__CRL_PORT"] = str(crl_port)
    mqtt_port = _free_port()
    env["FLEETWARDEN_GATEWAY__HOST"] = "127.0.0.1"
    env["FLEETWARDEN_GATEWAY__PORT"] = str(mqtt_port)
    t = tmp_path / "dev"
    t.mkdir()

    def fw(*args: str) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(
            [sys.executable, "-m", "fleetwarden", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 0, (args, p.stderr)
        return p

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetwarden", "up", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")))
    reader.start()
    base = f"https://127.0.0.1:{port}"
    root = data / "identity" / "root.crt"
    try:
        deadline = time.monotonic() + 90
        while not any("is up" in line for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            time.sleep(0.1)
        anon = ssl.create_default_context(cafile=str(root))

        def est(op: str, body: bytes, **kw: object) -> x509.Certificate:
            r = httpx.post(
                f"{base}/.well-known/est/{op}",
                content=body,
                headers={"content-type": "application/pkcs10"},
                **kw,  # type: ignore[arg-type]
            )
            assert r.status_code == 200, r.text
            return pkcs7.load_der_pkcs7_certificates(base64.b64decode(r.content))[0]

        def enrol(device: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
            fw("device", "add", device)
            token = fw("device", "token", device).stdout.strip()
            key, body = _csr(device)
            return key, est("simpleenroll", body, auth=(device, token), verify=anon)

        def pub(name: str, device: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [
                    "mosquitto_pub",
                    *("-h", "127.0.0.1", "-p", str(mqtt_port), "--cafile", str(root)),
                    *("--cert", str(t / f"{name}.pem"), "--key", str(t / f"{name}.key")),
                    *("-i", device, "-q", "1", "-t", f"devices/{device}/telemetry", "-m", "1"),
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )

        def pub_until(name: str, device: str, ok: bool) -> None:
            deadline = time.monotonic() + 30
            while (pub(name, device).returncode == 0) != ok:
                assert time.monotonic() < deadline, (
                    f"{name}: broker did not {'accept' if ok else 'refuse'}"
                )
                time.sleep(0.5)

        old_issuer = x509.load_pem_x509_certificate(
            (data / "identity" / "issuing.crt").read_bytes()
        )
        k, c = enrol("dev-old")
        _save(t, "old", k, c)
        k, c = enrol("dev-old2")
        _save(t, "old2", k, c)
        assert c.issuer == old_issuer.subject
        pub_until("old", "dev-old", ok=True)

        summary = json.loads(fw("ca", "rollover", "--json").stdout)
        assert summary["generation"] == 2

        # the running service reloads on the rollover event: cacerts lists both
        deadline = time.monotonic() + 30
        while True:
            r = httpx.get(f"{base}/.well-known/est/cacerts", verify=anon)
            cas = pkcs7.load_der_pkcs7_certificates(base64.b64decode(r.content))
            if len(cas) == 3:
                break
            assert time.monotonic() < deadline, "the running service did not reload the CA"
            time.sleep(0.3)
        new_issuer = x509.load_pem_x509_certificate(
            (data / "identity" / "issuing.crt").read_bytes()
        )
        assert {c.subject for c in cas} == {
            old_issuer.subject,
            new_issuer.subject,
            x509.load_pem_x509_certificate(root.read_bytes()).subject,
        }

        k, c = enrol("dev-new")
        assert c.issuer == new_issuer.subject
        c.verify_directly_issued_by(new_issuer)
        _save(t, "new", k, c)
        k, c = enrol("dev-new2")
        _save(t, "new2", k, c)
        # mTLS re-enrolment with a NEW-issuer certificate: the live TLS context learned it
        mtls = ssl.create_default_context(cafile=str(root))
        mtls.load_cert_chain(t / "new2.pem", t / "new2.key")
        k2, body = _csr("dev-new2")
        renewed = est("simplereenroll", body, verify=mtls)
        assert renewed.issuer == new_issuer.subject
        _save(t, "new2", k2, renewed)
        # ... and with an OLD-issuer certificate: the renewal comes from the new one
        mtls = ssl.create_default_context(cafile=str(root))
        mtls.load_cert_chain(t / "old2.pem", t / "old2.key")
        k3, body = _csr("dev-old2")
        moved = est("simplereenroll", body, verify=mtls)
        assert moved.issuer == new_issuer.subject

        # the broker (restarted on the rollover event) accepts devices of both
        pub_until("new", "dev-new", ok=True)
        pub_until("old", "dev-old", ok=True)

        fw("device", "revoke", "dev-old", "--reason", "key_compromise")
        fw("device", "revoke", "dev-new", "--reason", "key_compromise")
        pub_until("old", "dev-old", ok=False)
        pub_until("new", "dev-new", ok=False)
        assert pub("new2", "dev-new2").returncode == 0  # unrevoked: still fine

        # relying parties: the CRLs from both distribution points + the root's
        crls = b""
        for name in ("issuing", "issuing-2"):
            r = httpx.get(f"http://127.0.0.1:{crl_port}/crl/{name}.crl")
            assert r.status_code == 200
            crls += x509.load_der_x509_crl(r.content).public_bytes(serialization.Encoding.PEM)
        assert httpx.get(f"http://127.0.0.1:{crl_port}/crl/issuing-9.crl").status_code == 404
        r = httpx.get(f"{base}/crl/issuing-2.crl", verify=anon)  # also on the API port
        assert (
            r.status_code == 200 and x509.load_der_x509_crl(r.content).issuer == new_issuer.subject
        )
        crls += (data / "identity" / "crl" / "root.crl.pem").read_bytes()
        (t / "crls.pem").write_bytes(crls)

        def verify(name: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [
                    "openssl",
                    "verify",
                    "-crl_check_all",
                    *("-CAfile", str(root), "-untrusted", str(data / "identity" / "chain.pem")),
                    *("-CRLfile", str(t / "crls.pem"), str(t / f"{name}.pem")),
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )

        for name in ("old", "new"):
            v = verify(name)
            assert v.returncode != 0 and "certificate revoked" in v.stdout + v.stderr
        for name in ("old2", "new2"):
            v = verify(name)
            assert v.returncode == 0, v.stdout + v.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        reader.join(timeout=5)
    out = "".join(lines)
    assert "Traceback" not in out, out
