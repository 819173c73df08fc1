"""Sinks against real local peers: an HTTP server (webhook, chat), aiosmtpd (SMTP), a UDP
and a TCP syslog receiver; retries with backoff; an unreachable sink never blocks."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from fleetwarden.detect.sinks import (
    ChatSink,
    Dispatcher,
    SmtpSink,
    SyslogSink,
    WebhookSink,
)

NOTE = {
    "event": "alert.opened",
    "alert": {
        "id": "a1",
        "severity": "high",
        "title": "auth failures",
        "device_id": "d1",
        "key": "rule:auth",
        "status": "New",
    },
}
SECRET = b"0123456789abcdef-secret"


class Recorder:
    def __init__(self, fail_first: int = 0) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.fail_first = fail_first
        self.calls = 0


@pytest.fixture
def http_server() -> Iterator[tuple[str, Recorder]]:
    rec = Recorder()

    class H(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            rec.calls += 1
            if rec.calls <= rec.fail_first:
                self.send_response(503)
                self.end_headers()
                return
            rec.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a: Any) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/hook", rec
    srv.shutdown()
    srv.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _deliver(sink: Any, **kw: Any) -> Dispatcher:
    d = Dispatcher([sink], backoff=0.01, **kw)
    d.start()
    d.notify(NOTE)
    await d.drain(10)
    await d.close()
    return d


def test_webhook_is_hmac_signed(http_server: tuple[str, Recorder]) -> None:
    url, rec = http_server
    d = asyncio.run(_deliver(WebhookSink(url, SECRET)))
    assert d.stats["webhook"].delivered == 1
    ((headers, body),) = rec.requests
    ts = headers["x-fleetwarden-timestamp"]
    want = "sha256=" + hmac.new(SECRET, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-fleetwarden-signature"], want)
    assert abs(int(ts) - time.time()) < 60
    assert json.loads(body) == NOTE
    # a receiver with another secret rejects it
    bad = "sha256=" + hmac.new(b"other", ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert bad != headers["x-fleetwarden-signature"]


def test_chat_webhook_slack_format(http_server: tuple[str, Recorder]) -> None:
    url, rec = http_server
    asyncio.run(_deliver(ChatSink(url)))
    payload = json.loads(rec.requests[0][1])
    assert payload["text"].startswith("[HIGH] alert.opened: auth failures")
    assert payload["blocks"][0]["type"] == "section"


def test_retries_with_backoff_then_delivers(http_server: tuple[str, Recorder]) -> None:
    url, rec = http_server
    rec.fail_first = 2
    d = asyncio.run(_deliver(WebhookSink(url, SECRET), attempts=4))
    st = d.stats["webhook"]
    assert (st.delivered, st.retried, st.failed) == (1, 2, 0)
    assert "503" in (st.last_error or "")


def test_email_over_smtp_to_local_server() -> None:
    got: list[bytes] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
            got.append(envelope.content)
            return "250 OK"

    port = _free_port()
    ctl = Controller(Handler(), hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        d = asyncio.run(
            _deliver(SmtpSink("127.0.0.1", port, "fleetwarden@example.org", ["soc@example.org"]))
        )
    finally:
        ctl.stop()
    assert d.stats["email"].delivered == 1
    msg = message_from_bytes(got[0])
    assert msg["To"] == "soc@example.org"
    assert "auth failures" in msg["Subject"]
    assert json.loads(msg.get_payload())["alert"]["id"] == "a1"  # type: ignore[arg-type]


def test_syslog_udp_and_tcp() -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(5)
    asyncio.run(_deliver(SyslogSink("127.0.0.1", udp.getsockname()[1])))
    data = udp.recv(4096).decode()
    udp.close()
    # <PRI>1 TIMESTAMP HOST APP - MSGID [SD] MSG ; facility 4 (auth), severity 3 (high)
    assert data.startswith("<35>1 ") and 'alert="a1"' in data and "auth failures" in data

    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(1)
    tcp.settimeout(5)
    port = tcp.getsockname()[1]
    received: list[bytes] = []

    def accept() -> None:
        conn, _ = tcp.accept()
        with conn:
            while chunk := conn.recv(4096):
                received.append(chunk)

    t = threading.Thread(target=accept)
    t.start()
    asyncio.run(_deliver(SyslogSink("127.0.0.1", port, protocol="tcp")))
    t.join(5)
    tcp.close()
    frame = b"".join(received)
    n, _, rest = frame.partition(b" ")
    assert int(n) == len(rest) and rest.startswith(b"<35>1 ")


def test_unreachable_sink_never_blocks_detection() -> None:
    async def run() -> tuple[float, Dispatcher]:
        # a port nobody listens on: connection refused, every attempt
        dead = WebhookSink(f"http://127.0.0.1:{_free_port()}/x", SECRET, timeout=0.5)
        d = Dispatcher([dead], queue_size=5, attempts=3, backoff=0.01)
        d.start()
        t0 = time.perf_counter()
        for _ in range(1000):
            d.notify(NOTE)  # the detection path: never awaits the network
        elapsed = time.perf_counter() - t0
        await d.drain(10)
        await d.close()
        return elapsed, d

    elapsed, d = asyncio.run(run())
    st = d.stats["webhook"]
    assert elapsed < 1.0
    assert st.dropped >= 990  # bounded queue: oldest dropped, counted
    assert st.failed >= 1 and st.delivered == 0
