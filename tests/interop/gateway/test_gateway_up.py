"""`fleetwarden up` as a real process brings up the managed broker; a device added with
the CLI connects with mosquitto_pub and its certificate; without certificates configured
`up` still serves the API and says why the gateway did not start."""

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
from gw_harness import needs_broker

from fleetwarden.gateway.testpki import ScratchPKI

pytestmark = [pytest.mark.interop, needs_broker]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fw(
    data: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetwarden", *args],
        env={**os.environ, "FLEETWARDEN_DATA_DIR": str(data), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _up(data: Path, api_port: int, env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetwarden", "up", "--port", str(api_port)],
        env={**os.environ, "FLEETWARDEN_DATA_DIR": str(data), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{api_port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    pytest.fail(f"up did not answer: {proc.stdout.read() if proc.stdout else ''}")


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def test_up_runs_broker_and_device_connects(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert _fw(data, "init", "--no-ca").returncode == 0
    pki = ScratchPKI(tmp_path / "pki")
    server = pki.server("localhost")
    mqtt_port = _free_port()
    env = {
        "FLEETWARDEN_GATEWAY__HOST": "127.0.0.1",
        "FLEETWARDEN_GATEWAY__PORT": str(mqtt_port),
        "FLEETWARDEN_GATEWAY__CA_FILE": str(pki.chain_path),
        "FLEETWARDEN_GATEWAY__CERT_FILE": str(server.cert_path),
        "FLEETWARDEN_GATEWAY__KEY_FILE": str(server.key_path),
    }
    proc = _up(data, _free_port(), env)
    try:
        assert _fw(data, "device", "add", "meter-7").returncode == 0
        cert = pki.device("meter-7")
        args = [
            "mosquitto_pub",
            "-h",
            "127.0.0.1",
            "-p",
            str(mqtt_port),
            "--cafile",
            str(pki.chain_path),
            "--cert",
            str(cert.cert_path),
            "--key",
            str(cert.key_path),
            "-i",
            "meter-7",
            "-t",
            "devices/meter-7/telemetry",
            "-m",
            "21.5",
        ]
        deadline = time.monotonic() + 20
        while True:  # the API-activity event makes the gateway recompile its policy
            r = subprocess.run(args, capture_output=True, text=True, timeout=20)
            if r.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert r.returncode == 0, r.stderr
        conf = data / "gateway" / "mosquitto.conf"
        assert oct(conf.stat().st_mode & 0o777) == "0o600"
        # no plaintext listener other than loopback
        listeners = [ln for ln in conf.read_text().splitlines() if ln.startswith("listener ")]
        assert listeners[0] == f"listener {mqtt_port} 127.0.0.1" and listeners[1].endswith(
            " 127.0.0.1"
        )
    finally:
        out = _stop(proc)
    assert f"mqtts://127.0.0.1:{mqtt_port}" in out
    assert "Traceback" not in out


def test_up_without_certificates_skips_gateway(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert _fw(data, "init", "--no-ca").returncode == 0
    proc = _up(data, _free_port(), {})
    out = _stop(proc)
    assert "gateway not started" in out and "gateway.cert_file" in out


def test_up_refuses_without_broker_binary(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert _fw(data, "init", "--no-ca").returncode == 0
    pki = ScratchPKI(tmp_path / "pki")
    server = pki.server("localhost")
    env = {
        "FLEETWARDEN_GATEWAY__PORT": str(_free_port()),
        "FLEETWARDEN_GATEWAY__CA_FILE": str(pki.chain_path),
        "FLEETWARDEN_GATEWAY__CERT_FILE": str(server.cert_path),
        "FLEETWARDEN_GATEWAY__KEY_FILE": str(server.key_path),
        "FLEETWARDEN_GATEWAY__MOSQUITTO_BIN": str(tmp_path / "no-mosquitto"),
    }
    r = _fw(data, "up", "--port", str(_free_port()), env=env)
    assert r.returncode == 78
    assert "install the Debian package 'mosquitto'" in r.stderr
    assert "Traceback" not in r.stderr
