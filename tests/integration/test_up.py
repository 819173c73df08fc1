"""`fleetwarden up` as a real process: serves the API with token auth and OpenAPI,
relays events committed by other processes (the CLI) onto its bus."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fw(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLEETWARDEN_DATA_DIR": str(data)}
    return subprocess.run(
        [sys.executable, "-m", "fleetwarden", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def running(tmp_path: Path):
    data = tmp_path / "data"
    init = _fw(data, "init", "--json", "--no-ca")  # the API alone (identity: test_identity_up)
    assert init.returncode == 0, init.stderr
    import json

    token = json.loads(init.stdout)["admin_token"]
    port = _free_port()
    env = {**os.environ, "FLEETWARDEN_DATA_DIR": str(data), "FLEETWARDEN_LOG_LEVEL": "debug"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetwarden", "up", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(f"up did not answer: {proc.stdout.read() if proc.stdout else ''}")
    yield data, base, token, proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_up_serves_api_with_tokens(running) -> None:
    data, base, token, proc = running
    h = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{base}/v1/devices").status_code == 401
    assert httpx.get(f"{base}/openapi.json").status_code == 401
    assert httpx.get(f"{base}/openapi.json", headers=h).json()["info"]["title"] == "fleetwarden"
    r = httpx.post(f"{base}/v1/devices", json={"device_id": "live-1"}, headers=h)
    assert r.status_code == 201
    # a change made by another process (the CLI) is visible to the API at once
    assert _fw(data, "device", "add", "cli-1").returncode == 0
    ids = [d["device_id"] for d in httpx.get(f"{base}/v1/devices", headers=h).json()]
    assert ids == ["cli-1", "live-1"]


def test_up_relays_outbox_and_prints_urls(running) -> None:
    data, base, token, proc = running
    assert _fw(data, "device", "add", "relay-me").returncode == 0
    from sqlalchemy import create_engine, text

    eng = create_engine(f"sqlite:///{data / 'fleetwarden.db'}")
    deadline = time.monotonic() + 10
    pending = -1
    while time.monotonic() < deadline:
        with eng.connect() as c:
            pending = c.execute(
                text("SELECT count(*) FROM event_outbox WHERE relayed_at IS NULL")
            ).scalar_one()
        if pending == 0:
            break
        time.sleep(0.2)
    eng.dispose()
    assert pending == 0
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=15)
    assert f"{base}/v1" in out and f"{base}/openapi.json" in out


def test_up_refuses_busy_port(tmp_path: Path) -> None:
    data = tmp_path / "d"
    assert _fw(data, "init", "--no-ca").returncode == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = _fw(data, "up", "--port", str(port))
    assert r.returncode == 78
    assert "cannot listen" in r.stderr and "Traceback" not in r.stderr
