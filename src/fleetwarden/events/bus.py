"""The event bus: a small publish/subscribe interface and its in-process implementation.

Producers call :meth:`EventBus.publish`; consumers register a named handler with
:meth:`EventBus.subscribe`, optionally limited to some event classes. The names are
durable-consumer names: a JetStream implementation keeps each consumer's position under
that name, so producers and consumers never change when the backend does.

Invariants of :class:`InProcessBus`:
- every subscriber sees every matching event, in publish order;
- a slow subscriber applies back-pressure to publishers (bounded queue) rather than
  growing memory without bound;
- a handler that raises is logged and keeps receiving events; it never stops the bus or
  other subscribers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from fleetwarden.events.model import Event, EventClass

log = logging.getLogger(__name__)

Handler = Callable[[Event], Awaitable[None]]


class EventBus(Protocol):
    """What producers and consumers rely on; one implementation per engine."""

    async def publish(self, event: Event) -> None: ...

    def subscribe(
        self, name: str, handler: Handler, *, classes: Iterable[EventClass] | None = None
    ) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


@dataclass
class _Subscriber:
    name: str
    handler: Handler
    classes: frozenset[EventClass] | None
    queue: asyncio.Queue[Event | None]
    task: asyncio.Task[None] | None = None
    failures: int = 0
    delivered: int = 0

    def wants(self, event: Event) -> bool:
        return self.classes is None or event.class_uid in self.classes


class InProcessBus:
    """asyncio implementation for the embedded default (one ``fleetwarden up`` process)."""

    def __init__(self, *, queue_size: int = 10_000) -> None:
        self._queue_size = queue_size
        self._subs: dict[str, _Subscriber] = {}
        self._started = False
        self._closed = False

    def subscribe(
        self, name: str, handler: Handler, *, classes: Iterable[EventClass] | None = None
    ) -> None:
        if name in self._subs:
            raise ValueError(f"a subscriber named {name!r} already exists")
        sub = _Subscriber(
            name=name,
            handler=handler,
            classes=None if classes is None else frozenset(classes),
            queue=asyncio.Queue(maxsize=self._queue_size),
        )
        self._subs[name] = sub
        if self._started:
            sub.task = asyncio.create_task(self._run(sub), name=f"bus:{name}")

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        for sub in self._subs.values():
            sub.task = asyncio.create_task(self._run(sub), name=f"bus:{sub.name}")

    async def publish(self, event: Event) -> None:
        if self._closed:
            raise RuntimeError("event bus is closed")
        # A snapshot: a component may subscribe while this awaits (``up`` starts the
        # outbox relay before the components that subscribe), and a dict changing size
        # mid-iteration would abort the publish half-way (and the relay's retry would
        # deliver the event twice to the subscribers already served).
        for sub in list(self._subs.values()):
            if sub.wants(event):
                await sub.queue.put(event)

    async def drain(self) -> None:
        """Wait until every event published so far has been handled (tests, shutdown)."""
        for sub in list(self._subs.values()):
            if sub.task is not None:
                await sub.queue.join()

    async def close(self) -> None:
        """Deliver what is queued, then stop the consumers."""
        if self._closed:
            return
        await self.drain()
        self._closed = True
        for sub in self._subs.values():
            if sub.task is not None:
                await sub.queue.put(None)
        for sub in self._subs.values():
            if sub.task is not None:
                await sub.task

    def stats(self) -> dict[str, dict[str, int]]:
        return {
            s.name: {"delivered": s.delivered, "failures": s.failures, "queued": s.queue.qsize()}
            for s in self._subs.values()
        }

    async def _run(self, sub: _Subscriber) -> None:
        while True:
            event = await sub.queue.get()
            try:
                if event is None:
                    return
                try:
                    await sub.handler(event)
                    sub.delivered += 1
                except Exception:
                    sub.failures += 1
                    log.exception("event handler %r failed on event %s", sub.name, event.uid)
            finally:
                sub.queue.task_done()


def create_bus(url: str) -> EventBus:
    """The bus named by a URL: ``memory://`` now; ``nats://`` joins with JetStream."""
    if url.startswith("memory://"):
        return InProcessBus()
    from fleetwarden.errors import ConfigError

    raise ConfigError(f"unsupported event bus URL {url!r} (supported: memory://)")
