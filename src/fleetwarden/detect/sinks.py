"""Alert sinks: HMAC-signed webhook, Slack-compatible chat webhook, SMTP mail, syslog.

The :class:`Dispatcher` gives each sink its own bounded queue and worker task. Detection
only ever calls :meth:`Dispatcher.notify`, which never waits on the network: a full
queue drops its oldest notification (counted), so an unreachable sink costs memory
bounded by ``queue_size`` and never slows detection. Each delivery is retried with
exponential backoff and jitter up to ``attempts`` times, then counted as failed.

Webhook signature (documented in docs/detect.md): header ``X-Fleetwarden-Timestamp``
(unix seconds) and ``X-Fleetwarden-Signature: sha256=<hex>``, the HMAC-SHA256 of
``<timestamp>.<raw body>`` with the shared secret; receivers reject timestamps older
than a few minutes (replay).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import smtplib
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any, Protocol

import httpx

log = logging.getLogger(__name__)


class Sink(Protocol):
    name: str

    async def send(self, note: dict[str, Any]) -> None:
        """Deliver one notification; raise on failure (the dispatcher retries)."""
        ...


def _summary(note: dict[str, Any]) -> str:
    a = note.get("alert", {})
    return (
        f"[{str(a.get('severity', '?')).upper()}] {note.get('event', 'alert')}: "
        f"{a.get('title', '')} (device {a.get('device_id')}, alert {a.get('id')})"
    )


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    return (
        "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    )


class WebhookSink:
    """POST the notification as JSON, signed with HMAC-SHA256."""

    def __init__(self, url: str, secret: bytes, *, timeout: float = 5.0, name: str = "webhook"):
        self.name = name
        self.url = url
        self.secret = secret
        self.timeout = timeout

    async def send(self, note: dict[str, Any]) -> None:
        body = json.dumps(note, sort_keys=True, separators=(",", ":")).encode()
        ts = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-Fleetwarden-Timestamp": ts,
            "X-Fleetwarden-Signature": sign(self.secret, ts, body),
        }
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            r = await client.post(self.url, content=body, headers=headers)
            r.raise_for_status()


class ChatSink:
    """Slack-compatible incoming webhook (also accepted by Mattermost, Rocket.Chat)."""

    def __init__(self, url: str, *, timeout: float = 5.0, name: str = "chat"):
        self.name = name
        self.url = url
        self.timeout = timeout

    async def send(self, note: dict[str, Any]) -> None:
        a = note.get("alert", {})
        payload = {
            "text": _summary(note),
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": f"*{_summary(note)}*"}},
                {
                    "type": "context",
                    "elements": [
                        {
                            "type": "mrkdwn",
                            "text": f"key `{a.get('key')}` · status {a.get('status')}",
                        }
                    ],
                },
            ],
        }
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            r = await client.post(self.url, json=payload)
            r.raise_for_status()


class SmtpSink:
    """Mail over SMTP (stdlib smtplib in a worker thread), STARTTLS when asked."""

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        recipients: list[str],
        *,
        starttls: bool = False,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
        name: str = "email",
    ):
        self.name = name
        self.host, self.port = host, port
        self.sender, self.recipients = sender, recipients
        self.starttls = starttls
        self.username, self.password = username, password
        self.timeout = timeout

    def _send_sync(self, note: dict[str, Any]) -> None:
        msg = EmailMessage()
        msg["Subject"] = _summary(note)[:200]
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        msg.set_content(json.dumps(note, indent=2, sort_keys=True))
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            if self.starttls:
                smtp.starttls()
            if self.username and self.password:
                smtp.login(self.username, self.password)
            smtp.send_message(msg)

    async def send(self, note: dict[str, Any]) -> None:
        await asyncio.to_thread(self._send_sync, note)


class SyslogSink:
    """RFC 5424 messages over UDP or TCP (octet-counted framing, RFC 6587)."""

    _SEV = {"low": 5, "medium": 4, "high": 3, "critical": 2}

    def __init__(
        self,
        host: str,
        port: int,
        *,
        protocol: str = "udp",
        facility: int = 4,  # security/authorization
        name: str = "syslog",
    ):
        self.name = name
        self.host, self.port = host, port
        self.protocol = protocol
        self.facility = facility

    def format(self, note: dict[str, Any]) -> bytes:
        a = note.get("alert", {})
        pri = self.facility * 8 + self._SEV.get(str(a.get("severity")), 4)
        ts = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        host = socket.gethostname()[:255] or "-"
        sd = f'[fleetwarden@32473 alert="{a.get("id")}" device="{a.get("device_id")}"]'
        msg = _summary(note).replace("\n", " ")
        return f"<{pri}>1 {ts} {host} fleetwarden - ALERT {sd} {msg}".encode()

    async def send(self, note: dict[str, Any]) -> None:
        data = self.format(note)
        loop = asyncio.get_running_loop()
        if self.protocol == "tcp":
            reader, writer = await asyncio.open_connection(self.host, self.port)
            try:
                writer.write(str(len(data)).encode() + b" " + data)
                await writer.drain()
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            del reader
            return
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=(self.host, self.port)
        )
        try:
            transport.sendto(data)
        finally:
            transport.close()


@dataclass
class SinkStats:
    delivered: int = 0
    failed: int = 0
    retried: int = 0
    dropped: int = 0
    last_error: str | None = None


@dataclass
class _Lane:
    sink: Sink
    queue: asyncio.Queue[dict[str, Any]]
    stats: SinkStats = field(default_factory=SinkStats)
    task: asyncio.Task[None] | None = None


class Dispatcher:
    """Fans notifications out to sinks without ever blocking the caller."""

    def __init__(
        self,
        sinks: list[Sink],
        *,
        queue_size: int = 1000,
        attempts: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._lanes = [_Lane(s, asyncio.Queue(maxsize=queue_size)) for s in sinks]

    @property
    def stats(self) -> dict[str, SinkStats]:
        return {lane.sink.name: lane.stats for lane in self._lanes}

    def start(self) -> None:
        for lane in self._lanes:
            if lane.task is None:
                lane.task = asyncio.create_task(self._run(lane), name=f"sink:{lane.sink.name}")

    def notify(self, note: dict[str, Any]) -> None:
        for lane in self._lanes:
            if lane.queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    lane.queue.get_nowait()
                    lane.queue.task_done()
                lane.stats.dropped += 1
            lane.queue.put_nowait(note)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until every queued notification was delivered or given up (tests, stop)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(lane.queue.join() for lane in self._lanes)), timeout
            )

    async def _run(self, lane: _Lane) -> None:
        while True:
            note = await lane.queue.get()
            try:
                await self._deliver(lane, note)
            finally:
                lane.queue.task_done()

    async def _deliver(self, lane: _Lane, note: dict[str, Any]) -> None:
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                await lane.sink.send(note)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any transport failure: retry, never propagate
                lane.stats.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                if attempt == self.attempts:
                    lane.stats.failed += 1
                    log.warning(
                        "sink %s: giving up after %d attempts: %s",
                        lane.sink.name,
                        attempt,
                        lane.stats.last_error,
                    )
                    return
                lane.stats.retried += 1
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))  # noqa: S311 (jitter)
                delay = min(delay * 2, self.max_backoff)
            else:
                lane.stats.delivered += 1
                return

    async def close(self) -> None:
        for lane in self._lanes:
            if lane.task is not None:
                lane.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await lane.task
                lane.task = None
