"""Detection inside the running service: metric windows in over the API, an alert in the
registry, its Detection Finding relayed by the outbox onto the bus, a signed webhook
call out to a real local HTTP server, an automatic quarantine in the registry.

(The same path fed by live broker traffic lands with the gateway issue.)"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetwarden.detect.alerts import AlertStore
from fleetwarden.detect.config import DetectSettings, WebhookSinkConfig
from fleetwarden.registry import Actor, Registry
from fleetwarden.registry.schemas import DeviceCreate, Role, TokenCreate
from fleetwarden.service import serve
from fleetwarden.settings import load_settings

SECRET = b"integration-secret-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def hook() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
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


def test_metrics_to_alert_to_signed_webhook_and_quarantine(
    tmp_path: Path, hook: tuple[str, list[tuple[dict[str, str], bytes]]]
) -> None:
    url, got = hook
    data = tmp_path / "data"
    data.mkdir()
    (data / "hook.secret").write_bytes(SECRET)
    (data / "rules.toml").write_text(
        '[[rules]]\nname = "auth-failures"\nmetric = "auth_failures"\n'
        'comparison = "less-than"\nvalue = 5\nseverity = "high"\n'
        '[rules.mitigation]\naction = "quarantine"\nmode = "auto"\n'
    )
    port = _free_port()
    settings = load_settings(
        data,
        api_port=port,
        detect=DetectSettings(
            rules_file=Path("rules.toml"),
            sinks=[WebhookSinkConfig(type="webhook", url=url, secret_file=Path("hook.secret"))],
        ),
    )
    reg = Registry.open(settings.effective_database_url)
    reg.add_device(DeviceCreate(device_id="cam-1"), Actor("test"))  # type: ignore[call-arg]
    token = reg.create_token(TokenCreate(name="ops", role=Role.OPERATOR), Actor("test")).token
    base = f"http://127.0.0.1:{port}"
    h = {"Authorization": f"Bearer {token}"}
    now = int(time.time())

    async def scenario() -> dict[str, Any]:
        task = asyncio.create_task(serve(settings, reg))
        async with httpx.AsyncClient(base_url=base, headers=h, timeout=10) as c:
            for _ in range(200):
                try:
                    if (await c.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            bad = [
                {
                    "device_id": "cam-1",
                    "start": now - 300,
                    "auth_failures": 250,
                    "source_ips": ["185.2.3.4"],
                },
                {"device_id": "ghost", "start": now - 300, "auth_failures": 1},
                {"device_id": "cam-1", "start": now + 86400, "auth_failures": 1},
                {"device_id": "cam-1", "start": now - 300, "auth_failures": -4},
                "garbage",
            ]
            r = await c.post("/v1/detect/metrics", json=bad)
            assert r.status_code == 200, r.text
            result = r.json()
            for _ in range(200):
                if got:
                    break
                await asyncio.sleep(0.05)
            status = (await c.get("/v1/detect/status")).json()
            alerts = (await c.get("/v1/alerts")).json()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return {"result": result, "status": status, "alerts": alerts}

    out = asyncio.run(scenario())
    assert out["result"]["accepted"] == 1 and out["result"]["rejected"] == 4
    assert out["result"]["reasons"] == {
        "unknown_device": 1,
        "future": 1,
        "negative": 1,
        "bad_type": 1,
    }
    rej = out["status"]["intake"]["rejected"]
    assert rej == {"unknown_device": 1, "future": 1, "negative": 1, "bad_type": 1}
    (alert,) = out["alerts"]
    assert alert["key"] == "rule:auth-failures" and alert["severity"] == "high"
    assert alert["evidence"]["value"] == 250
    # the webhook: signed, carrying the OCSF Detection Finding
    assert got, "no webhook call"
    headers, body = got[0]
    ts = headers["x-fleetwarden-timestamp"]
    want = "sha256=" + hmac.new(SECRET, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert headers["x-fleetwarden-signature"] == want
    note = json.loads(body)
    assert note["event"] == "alert.opened" and note["alert"]["id"] == alert["id"]
    assert note["ocsf"]["class_uid"] == 2004 and note["ocsf"]["device"]["uid"] == "cam-1"
    # automatic mitigation: the device is in the quarantine group, recorded on the alert
    assert "quarantine" in reg.get_device("cam-1").groups
    final = AlertStore(reg).get(alert["id"])
    assert final.mitigation["state"] == "done"
    reg.close()
    # baselines survive a restart: snapshot written at stop, 0600
    snap = data / "detect" / "baselines.bin"
    assert snap.stat().st_mode & 0o777 == 0o600
    from fleetwarden.detect.baseline import Baselines

    restored = Baselines()
    assert restored.loads(snap.read_bytes()) == 1 and "cam-1" in restored.devices
