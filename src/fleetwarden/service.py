"""The running control plane (``fleetwarden up``): API server, event bus, workers.

Controls join by adding a :class:`Component` to the list built in :func:`components`;
each gets the shared :class:`Context` (settings, registry, bus, API app) and is started
and stopped in order. Nothing else holds global state.

The outbox relay moves events committed by any process (API, CLI, workers) from the
registry's outbox table onto the bus, in commit order, at least once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

import uvicorn
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from fleetwarden._internal.heap import freeze_startup_heap, thaw_heap
from fleetwarden.api import create_app
from fleetwarden.errors import ConfigError, Error
from fleetwarden.events import Event, EventBus, Severity, create_bus, detection_finding
from fleetwarden.identity.component import IdentityComponent
from fleetwarden.identity.tls import server_tls
from fleetwarden.registry import Registry
from fleetwarden.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Context:
    settings: Settings
    registry: Registry
    bus: EventBus
    app: FastAPI
    #: URLs the running service answers on, printed at start ("API", "OpenAPI", ...)
    urls: dict[str, str] = field(default_factory=dict)
    #: scheme://host:port of the API listener (https once the fleet CA exists)
    api_base: str = ""


class Component(Protocol):
    name: str

    async def start(self, ctx: Context) -> None: ...

    async def stop(self) -> None: ...


class OutboxRelay:
    """Publishes outbox rows to the bus, then marks them relayed."""

    name = "outbox-relay"

    def __init__(self, *, interval: float = 0.2, batch: int = 500) -> None:
        self.interval = interval
        self.batch = batch
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    async def start(self, ctx: Context) -> None:
        self._ctx = ctx
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    def poke(self) -> None:
        self._wake.set()

    async def relay_once(self) -> int:
        ctx = self._ctx
        rows = await run_in_threadpool(ctx.registry.pending_events, self.batch)
        done: list[int] = []
        for row_id, payload in rows:
            try:
                event = Event.from_ocsf(payload)
            except Error as exc:
                # A damaged row is itself a security fact: it goes on the bus (and so
                # into the audit log) as a finding naming the row, never silently away.
                log.error("outbox row %d is not a valid event: %s", row_id, exc)
                event = malformed_outbox_finding(row_id, payload, str(exc))
            await ctx.bus.publish(event)
            done.append(row_id)
        # mark relayed only once consumers handled them (the audit log acks durably)
        drain = getattr(ctx.bus, "drain", None)
        if done and drain is not None:
            await drain()
        await run_in_threadpool(ctx.registry.mark_relayed, done)
        return len(done)

    async def _run(self) -> None:
        while True:
            try:
                n = await self.relay_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # database hiccup: retry, never die
                log.warning("outbox relay: %s", exc)
                n = 0
            if n < self.batch:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.interval)

    async def stop(self) -> None:
        if self._task is not None:
            try:
                await self.relay_once()
            except Exception as exc:
                log.warning("outbox relay final flush failed: %s", exc)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def malformed_outbox_finding(row_id: int, payload: object, reason: str) -> Event:
    raw = json.dumps(payload, sort_keys=True, default=str).encode()
    return detection_finding(
        title=f"outbox row {row_id} is not a valid event",
        uid=f"outbox-malformed-{row_id}",
        severity=Severity.HIGH,
        evidence={
            "row_id": row_id,
            "reason": reason[:500],
            "sha256": hashlib.sha256(raw).hexdigest(),
            "excerpt": raw[:256].decode(errors="replace"),
        },
    )


def components(settings: Settings) -> list[Component]:
    """Every component ``up`` runs, in start order. Controls add themselves here."""
    from fleetwarden.auditlog.component import AuditLogComponent
    from fleetwarden.detect.service import DetectService
    from fleetwarden.firmware.component import FirmwareComponent
    from fleetwarden.gateway import Gateway

    detect = [DetectService(settings.detect, settings.data_dir)] if settings.detect.enabled else []
    # the audit log starts before (and so stops after) the relay that feeds it
    return [
        *([AuditLogComponent()] if settings.auditlog.enabled else []),
        OutboxRelay(),
        IdentityComponent(),
        Gateway(),
        *detect,
        FirmwareComponent(),
    ]


async def serve(
    settings: Settings,
    registry: Registry,
    *,
    on_ready: Callable[[Context], None] | None = None,
    extra: list[Component] | None = None,
) -> None:
    """Run the control plane until cancelled or interrupted."""
    bus = create_bus(settings.event_bus_url)
    app = create_app(settings, registry)
    ctx = Context(settings=settings, registry=registry, bus=bus, app=app)
    app.state.ctx = ctx
    parts = components(settings) + (extra or [])
    await bus.start()
    started: list[Component] = []
    # HTTPS with optional client certificates once the fleet CA exists (identity.tls).
    tls = server_tls(settings, registry)
    app.state.server_tls = tls  # identity adds a new issuing CA to it after a rollover
    config = uvicorn.Config(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_level="warning",
        lifespan="off",
        server_header=False,
        **(tls.uvicorn_kwargs() if tls else {}),
    )
    server = uvicorn.Server(config)
    sock = bind_socket(settings.api_host, settings.api_port)
    port = sock.getsockname()[1]
    base = ctx.api_base = f"{'https' if tls else 'http'}://{_host(settings.api_host)}:{port}"
    ctx.urls.update(
        {"API": f"{base}/v1", "OpenAPI": f"{base}/openapi.json", "Health": f"{base}/health"}
    )
    if tls:
        ctx.urls["EST"] = f"{base}/.well-known/est/"
    try:
        for part in parts:
            await part.start(ctx)
            started.append(part)
        # start-up is done: its objects leave the garbage collector's full walks
        freeze_startup_heap()
        serve_task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not serve_task.done():
            await asyncio.sleep(0.02)
        if serve_task.done():
            serve_task.result()
            raise RuntimeError("API server stopped at start")
        if on_ready is not None:
            on_ready(ctx)
        await serve_task
    finally:
        server.should_exit = True
        for part in reversed(started):
            await part.stop()
        await bus.close()
        sock.close()
        thaw_heap()


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` (the service) to completion on uvloop when it is installed (it comes
    with ``uvicorn[standard]`` on Linux and macOS), else on the standard asyncio loop.
    uvloop's TLS transport is compiled code; with the standard loop, TLS record
    handling in Python was a large share of the API's CPU time per HTTPS request."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind the API socket ourselves so a busy port is a clear error, not an exit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio turns Nagle off (TCP_NODELAY) only on accepted
    # sockets whose proto is IPPROTO_TCP, and accepted sockets inherit it from this one.
    # With proto 0 every response written in two parts (head, then body) waited for the
    # client's delayed ACK: about 40 ms per request on keep-alive connections.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
