"""`fleetwarden up` as a real process records admin actions and refusals in the audit
log through the outbox and the bus, publishes checkpoints, and the log verifies."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fw(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetwarden", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_up_records_admin_actions(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {
        **os.environ,
        "FLEETWARDEN_DATA_DIR": str(data),
        "FLEETWARDEN_AUDITLOG__CHECKPOINT_INTERVAL": "0.3",
    }
    init = _fw(env, "init", "--json", "--no-ca")  # plain HTTP API: the audit log is the point
    assert init.returncode == 0, init.stderr
    token = json.loads(init.stdout)["admin_token"]
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetwarden", "up", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    h = {"Authorization": f"Bearer {token}"}
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        assert (
            httpx.post(f"{base}/v1/devices", json={"device_id": "cam-1"}, headers=h).status_code
            == 201
        )
        assert httpx.get(f"{base}/v1/devices").status_code == 401  # refused: recorded too
        # a change made by another process (the CLI) reaches the log through the outbox
        assert _fw(env, "device", "add", "cam-2").returncode == 0
        messages: list[str] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            got = httpx.get(f"{base}/v1/auditlog/entries?limit=100", headers=h).json()
            messages = [
                e["record"]["event"]["message"] for e in got if e["record"]["kind"] == "event"
            ]
            if (
                len(messages) >= 4
                and httpx.get(f"{base}/v1/auditlog", headers=h).json()["checkpoint"]
            ):
                break
            time.sleep(0.2)
        text = " ".join(messages)
        assert "cam-1" in text and "cam-2" in text and "refused" in text, messages
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
    v = _fw(env, "log", "verify", "--json")
    assert v.returncode == 0, v.stdout + v.stderr
    rep = json.loads(v.stdout)
    assert rep["ok"] and rep["size"] >= 4 and rep["newest_checkpoint"] == rep["size"]
    anchor = data / "auditlog-checkpoints.txt"
    assert json.loads(anchor.read_text().splitlines()[-1])["size"] == rep["size"]
