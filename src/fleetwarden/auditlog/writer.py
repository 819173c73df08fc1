"""Group commit: one writer thread turns many concurrent appends into one fsync'd commit.

Producers call :meth:`GroupCommitter.submit` (or ``await append``) and get a future that
resolves only after the transaction holding their entries has committed, which with
SQLite ``synchronous=FULL`` (or PostgreSQL's default ``fsync``) means it is on disk. While
one batch commits, the next accumulates, so throughput grows with load and latency stays
one commit. An acknowledged append therefore survives ``kill -9`` at any instant; an
unacknowledged one may or may not be there, and a retry is harmless (dedupe by uid).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from fleetwarden.auditlog.store import AppendResult, AuditStore, Pending

log = logging.getLogger(__name__)

_Item = tuple[Sequence[Pending], Future[list[AppendResult]]]


class GroupCommitter:
    def __init__(
        self,
        store: AuditStore,
        *,
        batch_max: int = 5000,
        on_commit: Callable[[int], None] | None = None,
    ) -> None:
        self.store = store
        self.batch_max = batch_max
        self.on_commit = on_commit
        self._q: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.commits = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="auditlog-writer", daemon=True)
            self._thread.start()

    def submit(self, items: Sequence[Pending]) -> Future[list[AppendResult]]:
        fut: Future[list[AppendResult]] = Future()
        if self._stopping or self._thread is None:
            fut.set_exception(RuntimeError("audit log writer is not running"))
            return fut
        self._q.put((items, fut))
        return fut

    async def append(self, items: Sequence[Pending]) -> list[AppendResult]:
        return await asyncio.wrap_future(self.submit(items))

    def stop(self) -> None:
        """Commit everything submitted so far, then stop the thread."""
        self._stopping = True
        if self._thread is not None:
            self._q.put(None)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._q.get()
            if first is None:
                break
            batch: list[_Item] = [first]
            n = len(first[0])
            while n < self.batch_max:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
                n += len(nxt[0])
            self._commit(batch)

    def _commit(self, batch: list[_Item]) -> None:
        items = [p for group, _ in batch for p in group]
        try:
            results = self.store.append(items)
        except Exception as exc:  # database down, disk full, damaged log: tell producers
            log.error("audit log append of %d entries failed: %s", len(items), exc)
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        self.commits += 1
        pos = 0
        top = -1
        for group, fut in batch:
            part = results[pos : pos + len(group)]
            pos += len(group)
            top = max([top, *(r.seq for r in part)])
            if not fut.done():
                fut.set_result(part)
        if self.on_commit is not None and top >= 0:
            try:
                self.on_commit(top + 1)
            except Exception:  # a checkpoint hook must never break the writer
                log.exception("audit log commit hook failed")
