"""`fleetwarden up` on a fresh data directory, as a real process: after `ca init` it
serves HTTPS (fleet-CA server certificate) on the API port, prints the https URLs, the
EST endpoints answer there and the CRL is served over plain HTTP."""

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

    token = json.loads(fw("init", "--json").stdout)["admin_token"]
    p = fw("ca", "init", "--json")
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["crl_url"] == f"http://127.0.0.1:{crl_port}/crl/issuing.crl"
    assert fw("ca", "init").returncode == 73  # exists already
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetwarden", "up", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        ctx = ssl.create_default_context(cafile=info["root"])
        base = f"https://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
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
        r = httpx.get(
            f"{base}/v1/version", headers={"Authorization": f"Bearer {token}"}, verify=ctx
        )
        assert r.status_code == 200
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)  # plain HTTP is gone
        crl = httpx.get(info["crl_url"])
        assert crl.status_code == 200 and crl.headers["content-type"] == "application/pkix-crl"
        x509.load_der_x509_crl(crl.content)
        assert base64.b64decode(httpx.get(f"{base}/.well-known/est/csrattrs", verify=ctx).content)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    assert f"https://127.0.0.1:{port}/v1" in out
    assert f"https://127.0.0.1:{port}/.well-known/est/" in out
    assert f"http://127.0.0.1:{crl_port}/crl/issuing.crl" in out
