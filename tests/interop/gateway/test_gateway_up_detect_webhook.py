"""Issue [detect], done-when: ``fleetwarden up`` raises alerts from live broker traffic end
to end. ``up`` runs as a real process from a config file (managed Mosquitto + plugin,
gateway monitor, detection control, outbox relay, sinks); a real paho device publishes
through the managed broker; the gateway's per-device metric windows reach the detector; a
rule fires; the alert is stored and a real local HTTP server receives the signed webhook
once, although the device keeps violating the rule in the next window (dedup)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from gw_harness import needs_broker
from paho.mqtt.enums import CallbackAPIVersion

from fleetwarden.gateway.testpki import Issued, ScratchPKI

pytestmark = [pytest.mark.interop, needs_broker]

SECRET = b"up-e2e-webhook-secret-0123456789"
WINDOW = 10  # seconds: short windows so the test takes ~30 s, same code path as 300 s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fw(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetwarden", *args],
        env={**os.environ, "FLEETWARDEN_DATA_DIR": str(data)},
        capture_output=True,
        text=True,
        timeout=60,
    )


Hook = tuple[str, list[tuple[dict[str, str], bytes]]]


@pytest.fixture
def hook() -> Iterator[Hook]:
    """A real HTTP receiver (stdlib) on a free port, in a thread."""
    got: list[tuple[dict[str, str], bytes]] = []

    class H(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a: Any) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/hook", got
    srv.shutdown()
    srv.server_close()


def _device(
    pki: ScratchPKI, cert: Issued, port: int, client_id: str
) -> tuple[mqtt.Client, threading.Event]:
    """A paho MQTT 5 device session with its own client certificate."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.tls_set(
        ca_certs=str(pki.chain_path), certfile=str(cert.cert_path), keyfile=str(cert.key_path)
    )
    connected = threading.Event()

    def on_connect(c: Any, u: Any, f: Any, rc: Any, p: Any) -> None:
        if not rc.is_failure:
            connected.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    return client, connected


def _burst(client: mqtt.Client, n: int) -> None:
    for _ in range(n):
        client.publish("devices/cam-9/telemetry", b'{"t": 21.5}', qos=1).wait_for_publish(10)


def _wait(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _alerts(data: Path) -> list[dict[str, Any]]:
    r = _fw(data, "alerts", "list", "--json")
    assert r.returncode == 0, r.stderr
    out: list[dict[str, Any]] = json.loads(r.stdout)
    return out


def test_up_live_traffic_to_alert_to_signed_webhook_once(tmp_path: Path, hook: Hook) -> None:
    url, got = hook
    data = tmp_path / "data"
    init = _fw(data, "init", "--no-ca")  # plain-HTTP API; the broker uses its own PKI
    assert init.returncode == 0, init.stderr
    token = next(w for w in init.stdout.split() if w.startswith("fwt_"))
    pki = ScratchPKI(tmp_path / "pki")
    server = pki.server("localhost")
    mqtt_port, api_port = _free_port(), _free_port()
    secret = data / "hook.secret"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    (data / "rules.toml").write_text(
        '[[rules]]\nname = "chatty"\nmetric = "messages_sent"\n'
        'comparison = "less-than"\nvalue = 5\nseverity = "high"\n'
        "consecutive_to_clear = 100\n"  # stays open while the test runs: no resolve call
    )
    cfg = data / "fleetwarden.toml"
    cfg.write_text(
        cfg.read_text()
        + f"""
[gateway]
host = "127.0.0.1"
port = {mqtt_port}
ca_file = "{pki.chain_path}"
cert_file = "{server.cert_path}"
key_file = "{server.key_path}"
metrics_window_s = {WINDOW}
metrics_flush_ms = 200
policy_refresh_s = 0.5

[detect]
window_seconds = {WINDOW}
rules_file = "rules.toml"

[[detect.sinks]]
type = "webhook"
url = "{url}"
secret_file = "hook.secret"
"""
    )
    assert _fw(data, "device", "add", "cam-9").returncode == 0
    assert _fw(data, "device", "add", "cam-quiet").returncode == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetwarden", "up", "--port", str(api_port)],
        env={**os.environ, "FLEETWARDEN_DATA_DIR": str(data)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = ""
    try:
        _wait(lambda: proc.poll() is not None or _health(api_port), 60, "the API of `up`")
        assert proc.poll() is None, "up exited: " + (proc.stdout.read() if proc.stdout else "")
        cert = pki.device("cam-9")
        client, connected = _device(pki, cert, mqtt_port, "cam-9")
        quiet, quiet_connected = _device(pki, pki.device("cam-quiet"), mqtt_port, "cam-quiet")
        assert connected.wait(20) and quiet_connected.wait(20)
        _burst(client, 12)  # window 1: 12 messages, the rule says "fewer than 5"
        quiet.publish("devices/cam-quiet/telemetry", b"1", qos=1).wait_for_publish(10)
        _wait(lambda: got, 3 * WINDOW + 10, "the webhook call")
        # the device keeps violating in the next window while the alert is open
        seen = _status(api_port, token)["windows"]
        _burst(client, 12)
        # two more flushes of both devices: the window holding the burst was judged
        _wait(lambda: _status(api_port, token)["windows"] >= seen + 4, 3 * WINDOW + 10, "flush")
        time.sleep(1)  # a second webhook call would have been made by now
        status = _status(api_port, token)
        client.disconnect()
        client.loop_stop()
        quiet.disconnect()
        quiet.loop_stop()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert "Traceback" not in out, out[-3000:]

    (alert,) = _alerts(data)  # one alert, on the chatty device only
    assert alert["device_id"] == "cam-9" and alert["key"] == "rule:chatty"
    assert alert["count"] == 1 and alert["evidence"]["value"] >= 5
    assert len(got) == 1, [json.loads(b)["event"] for _, b in got]  # dedup: delivered once
    assert status["sinks"]["webhook-0"]["delivered"] == 1, status["sinks"]
    assert status["intake"]["rejected"] == {}, status["recent_rejections"]
    headers, body = got[0]
    ts = headers["x-fleetwarden-timestamp"]
    assert abs(int(ts) - time.time()) < 300
    want = "sha256=" + hmac.new(SECRET, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-fleetwarden-signature"], want)
    wrong = "sha256=" + hmac.new(b"x" * 32, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert headers["x-fleetwarden-signature"] != wrong
    note = json.loads(body)
    assert note["event"] == "alert.opened"
    assert note["alert"]["id"] == alert["id"] and note["alert"]["device_id"] == "cam-9"
    assert note["ocsf"]["class_uid"] == 2004
    assert note["ocsf"]["finding_info"]["analytic"]["name"] == "rule:chatty"
    assert SECRET.decode() not in out  # the secret is never logged


def _status(port: int, token: str) -> dict[str, Any]:
    r = httpx.get(
        f"http://127.0.0.1:{port}/v1/detect/status",
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    )
    assert r.status_code == 200, r.text
    st: dict[str, Any] = r.json()
    assert st["running"], st
    return st


def _health(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.TransportError:
        return False
