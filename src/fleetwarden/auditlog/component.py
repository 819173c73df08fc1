"""The running audit log (control C7): a bus consumer that appends every event, and the
checkpoint loop.

Invariants:
- the only way entries enter the log in ``fleetwarden up`` is this bus subscription:
  nothing appends behind the bus's back;
- every delivery is appended or recognised as a duplicate (same event uid) — never
  skipped: an event that cannot be serialised, is too large or is not an Event at all is
  recorded as a ``malformed`` entry with the reason, its digest and an excerpt;
- when the handler returns for the last queued event, every event delivered so far is
  durably committed (group commit): the handler only skips waiting while more events are
  queued behind it, and those join the same commit. So when the outbox relay sees the
  bus drained, the audit log holds the events on disk;
- a checkpoint is made every ``checkpoint_every`` entries or ``checkpoint_interval``
  seconds while the log grows, and published to the anchors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool

from fleetwarden.auditlog.service import AuditLog, open_log
from fleetwarden.auditlog.store import (
    AppendResult,
    Pending,
    canonical_json,
    pending_event,
    pending_malformed,
)
from fleetwarden.auditlog.writer import GroupCommitter
from fleetwarden.events import Event

if TYPE_CHECKING:
    from fleetwarden.service import Context

log = logging.getLogger(__name__)
SUBSCRIBER = "auditlog"


def to_pending(event: Any, max_bytes: int) -> Pending:
    """Validate one delivery and turn it into a log item (malformed ones included)."""
    if not isinstance(event, Event):
        return pending_malformed(event, f"not an Event but {type(event).__name__}")
    try:
        ocsf = event.to_ocsf()
        size = len(canonical_json(ocsf))
    except Exception as exc:  # unserialisable data, bad enum: record, never drop
        return pending_malformed(repr(event), f"cannot serialise event {event.uid!r}: {exc!r}")
    if not event.uid or len(event.uid) > 128:
        return pending_malformed(ocsf, "event uid is empty or longer than 128 characters")
    if size > max_bytes:
        return pending_malformed(ocsf, f"event of {size} bytes exceeds the {max_bytes}-byte limit")
    return pending_event(event.uid, ocsf)


class AuditLogComponent:
    name = "auditlog"

    def __init__(self) -> None:
        self.log: AuditLog | None = None
        self.committer: GroupCommitter | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._bus: Any = None
        self._pending: list[tuple[Future[list[AppendResult]], list[Pending]]] = []
        self._stopped = False
        self.appended = 0
        self.duplicates = 0
        self.malformed = 0

    async def start(self, ctx: Context) -> None:
        cfg = ctx.settings.auditlog
        self.cfg = cfg
        self.log = await run_in_threadpool(open_log, cfg, ctx.settings.data_dir)
        loop = asyncio.get_running_loop()

        def committed(size: int) -> None:
            last = self._last_cp
            if size - last >= cfg.checkpoint_every:
                loop.call_soon_threadsafe(self._wake.set)

        cp = self.log.store.latest_checkpoint()
        self._last_cp = cp.size if cp else 0
        self.committer = GroupCommitter(
            self.log.store, batch_max=cfg.batch_max, on_commit=committed
        )
        self.committer.start()
        self._bus = ctx.bus
        ctx.bus.subscribe(SUBSCRIBER, self.handle)
        ctx.app.state.auditlog = self.log
        self._task = asyncio.create_task(self._checkpoints(), name="auditlog-checkpoints")
        ctx.urls["Audit log"] = f"{ctx.api_base}/v1/auditlog"

    def _queued_behind(self) -> int:
        stats = getattr(self._bus, "stats", None)
        if stats is None:
            return 0
        try:
            return int(stats().get(SUBSCRIBER, {}).get("queued", 0))
        except Exception:
            return 0

    async def handle(self, event: Event) -> None:
        item = to_pending(event, self.cfg.max_event_bytes)
        if item.uid.startswith("malformed:"):
            log.warning("malformed event on the bus recorded in the audit log (%s)", item.uid)
        if self._stopped:  # a late delivery during shutdown: append it directly
            assert self.log is not None
            await run_in_threadpool(self.log.store.append, [item])
            return
        assert self.committer is not None
        self._pending.append((self.committer.submit([item]), [item]))
        if self._queued_behind() > 0:
            return  # the next event joins this commit; the last one waits for all
        await self.flush()

    async def flush(self) -> None:
        """Wait until everything handed to the writer is durable; retry what failed."""
        while self._pending:
            pending, self._pending = self._pending, []
            retry: list[Pending] = []
            for fut, items in pending:
                try:
                    results = await asyncio.wrap_future(fut)
                except Exception as exc:
                    log.error("audit append failed, retrying: %s", exc)
                    retry.extend(items)
                    continue
                for r in results:
                    if r.duplicate:
                        self.duplicates += 1
                    else:
                        self.appended += 1
            if retry:
                await asyncio.sleep(0.5)
                assert self.committer is not None
                self._pending.append((self.committer.submit(retry), retry))

    async def _checkpoints(self) -> None:
        assert self.log is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.cfg.checkpoint_interval)
            self._wake.clear()
            await self.checkpoint_now()

    async def checkpoint_now(self) -> None:
        assert self.log is not None
        try:
            cp = await run_in_threadpool(self.log.checkpointer.make)
        except Exception as exc:  # key or witness trouble: log loudly, keep appending
            log.error("audit checkpoint failed: %s", exc)
            return
        if cp is not None:
            self._last_cp = cp.size

    async def stop(self) -> None:
        drain = getattr(self._bus, "drain", None)
        if drain is not None:
            with contextlib.suppress(Exception):
                await drain()
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.committer is not None:
            await run_in_threadpool(self.committer.stop)
        self._stopped = True
        if self.log is not None:
            await self.checkpoint_now()
            self.log.close()
