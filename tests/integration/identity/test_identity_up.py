"""`fleetwarden up` on a fresh data directory, as a real process and with no other
command before it: it initialises the directory (admin token printed once, fleet CA),
serves HTTPS (fleet-CA server certificate) on the API port, prints the https URLs, the
EST endpoints answer there and the CRL is served over plain HTTP."""

from __future__ import annotations

import base64
import os
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
from cryptography.hazmat.primitives.serialization import pkcs7


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_up_serves_https_est_and_crl(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWARDEN_")}
    env["FLEETWARDEN_DATA_DIR"] = str(data)
    crl_port = _free_port()
    env["FLEETWARDEN_IDENTITY__CRL_PORT"] = str(crl_port)
    env["FLEETWARDEN_GATEWAY__HOST"] = "127.0.0.1"
    env["FLEETWARDEN_GATEWAY__PORT"] = str(_free_port())

    def fw(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fleetwarden", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

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
    root = data / "identity" / "root.crt"
    crl_url = f"http://127.0.0.1:{crl_port}/crl/issuing.crl"
    info = {"root": str(root), "crl_url": crl_url}
    try:
        base = f"https://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while not root.exists():  # `up` creates the fleet CA first
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            time.sleep(0.05)
        ctx = ssl.create_default_context(cafile=info["root"])
        while True:
            try:
                if httpx.get(f"{base}/health", verify=ctx, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        r = httpx.get(f"{base}/.well-known/est/cacerts", verify=ctx)
        assert r.status_code == 200 and r.headers["content-type"].startswith(
            "application/pkcs7-mime"
        )
        certs = pkcs7.load_der_pkcs7_certificates(base64.b64decode(r.content))
        assert {c.subject for c in certs} == {  # a SET OF: no order
            x509.load_pem_x509_certificate((data / "identity" / name).read_bytes()).subject
            for name in ("issuing.crt", "root.crt")
        }
        # the one-time admin token was printed, exactly as `init` prints it
        marker = "admin API token (shown once, store it now):"
        at = next(i for i, line in enumerate(lines) if marker in line)
        token = lines[at + 1].strip()
        r = httpx.get(
            f"{base}/v1/version", headers={"Authorization": f"Bearer {token}"}, verify=ctx
        )
        assert r.status_code == 200
        assert fw("ca", "init").returncode == 73  # the CA exists: `ca init` refuses
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)  # plain HTTP is gone
        crl = httpx.get(info["crl_url"])
        assert crl.status_code == 200 and crl.headers["content-type"] == "application/pkix-crl"
        x509.load_der_x509_crl(crl.content)
        assert base64.b64decode(httpx.get(f"{base}/.well-known/est/csrattrs", verify=ctx).content)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
        reader.join(timeout=5)
    out = "".join(lines)
    assert "fleet CA created in" in out
    assert f"https://127.0.0.1:{port}/v1" in out
    assert f"https://127.0.0.1:{port}/.well-known/est/" in out
    assert f"http://127.0.0.1:{crl_port}/crl/issuing.crl" in out
