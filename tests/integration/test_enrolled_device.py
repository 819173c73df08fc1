"""A device enrolled over EST uses its certificate everywhere `fleetwarden up` serves
devices, with unmodified clients: the managed Mosquitto broker (mosquitto_pub over
mTLS) and hawkBit DDI (httpx with the device's key). Another device's resources, no
certificate, and the certificate once revoked are refused, and each refusal is an
event. `fleetwarden up` runs as a real process on a fresh data directory."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_enrolled_device_on_broker_and_ddi(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWARDEN_")}
    env["FLEETWARDEN_DATA_DIR"] = str(data)
    env["FLEETWARDEN_IDENTITY__CRL_PORT"] = str(_free_port())
    mqtt_port = _free_port()
    env["FLEETWARDEN_GATEWAY__HOST"] = "127.0.0.1"
    env["FLEETWARDEN_GATEWAY__PORT"] = str(mqtt_port)

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

    init = json.loads(fw("init", "--json").stdout)  # also creates the fleet CA
    admin, root = init["admin_token"], init["ca"]["root"]
    for dev in ("dev-1", "dev-2"):
        fw("device", "add", dev)
    enroll_token = fw("device", "token", "dev-1").stdout.strip()

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetwarden", "up", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"https://127.0.0.1:{port}"
    try:
        anon = ssl.create_default_context(cafile=root)
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/health", verify=anon, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        # enrol dev-1 over EST with its one-time token
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-1")]))
            .sign(key, hashes.SHA256())
        )
        r = httpx.post(
            f"{base}/.well-known/est/simpleenroll",
            content=base64.b64encode(csr.public_bytes(serialization.Encoding.DER)),
            headers={"content-type": "application/pkcs10"},
            auth=("dev-1", enroll_token),
            verify=anon,
        )
        assert r.status_code == 200, r.text
        cert = pkcs7.load_der_pkcs7_certificates(base64.b64decode(r.content))[0]
        (tmp_path / "dev.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (tmp_path / "dev.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        mtls = ssl.create_default_context(cafile=root)
        mtls.load_cert_chain(tmp_path / "dev.pem", tmp_path / "dev.key")

        def pub(topic: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [
                    "mosquitto_pub",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(mqtt_port),
                    "--cafile",
                    root,
                    "--cert",
                    str(tmp_path / "dev.pem"),
                    "--key",
                    str(tmp_path / "dev.key"),
                    "-i",
                    "dev-1",
                    "-q",
                    "1",
                    "-t",
                    topic,
                    "-m",
                    "hello",
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )

        # the broker compiles its plugin on first start: wait for the listener
        deadline = time.monotonic() + 90
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", mqtt_port)) == 0:
                    break
            assert time.monotonic() < deadline, "broker did not come up"
            time.sleep(0.2)
        p = pub("devices/dev-1/telemetry")
        assert p.returncode == 0, p.stderr
        # (cross-device denial is proven with subscribers in tests/interop/gateway)

        r = httpx.get(f"{base}/DEFAULT/controller/v1/dev-1", verify=mtls)
        assert r.status_code == 200, r.text
        assert "polling" in r.json()["config"]
        # a device may not speak for another one
        assert httpx.get(f"{base}/DEFAULT/controller/v1/dev-2", verify=mtls).status_code == 403
        # no certificate at all
        r = httpx.get(f"{base}/DEFAULT/controller/v1/dev-1", verify=anon)
        assert r.status_code == 401
        # revoked: refused at once, with the reason
        h = {"Authorization": f"Bearer {admin}"}
        r = httpx.post(
            f"{base}/v1/devices/dev-1/revoke",
            json={"reason": "key_compromise"},
            headers=h,
            verify=anon,
        )
        assert r.status_code in (200, 201), r.text
        r = httpx.get(f"{base}/DEFAULT/controller/v1/dev-1", verify=mtls)
        assert r.status_code == 401
        assert "revoked" in r.json()["detail"]
        deadline = time.monotonic() + 10  # the gateway refuses within seconds
        while pub("devices/dev-1/telemetry").returncode == 0:
            assert time.monotonic() < deadline, "revoked certificate still accepted by the broker"
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
    from sqlalchemy import create_engine, text

    eng = create_engine(f"sqlite:///{data / 'fleetwarden.db'}")
    with eng.connect() as c:
        rows = [
            json.loads(p) if isinstance(p, str) else p
            for (p,) in c.execute(text("SELECT payload FROM event_outbox"))
        ]
    eng.dispose()
    ddi_refusals = [e["message"] for e in rows if e.get("auth_protocol") == "hawkbit-ddi"]
    assert any("no verified device certificate" in m for m in ddi_refusals)
    assert any("revoked" in m for m in ddi_refusals)
