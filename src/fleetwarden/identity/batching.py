"""Group commit for EST enrolments.

Every enrolment reads the registry (device, credentials, policy, key owners, history)
and writes a certificate, a key record and an event in one transaction. Done one by
one, the fixed cost of a transaction and of its look-ups dominates; here the requests
that arrive while a batch is being certified wait for the next batch, which
:meth:`IdentityService.enroll_many` certifies with set-based look-ups and one
transaction. Nothing waits on a timer: a lone request goes at once; under load the
batch grows to what arrived during the previous one (at most ``max_batch``).

One worker thread per process does the batches, so a process's issuances never contend
with each other for the database's write lock. Results keep each request's own outcome
(certificate, pending approval, refusal); a database failure of a batch is retried
request by request (``isolate``), so it fails only the request that causes it.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor

from fleetwarden.identity.service import EnrollmentRequest, EnrollResult, IdentityService

#: the largest batch: bounds the latency a batch adds to the requests behind it
MAX_BATCH = 64


class EnrollBatcher:
    """Collects EST enrolment requests on the event loop and certifies them in batches
    on one worker thread."""

    def __init__(self, service: IdentityService, max_batch: int = MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.service = service
        self.max_batch = max_batch
        self._queue: list[tuple[EnrollmentRequest, asyncio.Future[EnrollResult]]] = []
        self._draining = False
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="est-enroll")
        self.batches = 0  # statistics: batches run and requests certified in them
        self.requests = 0

    async def submit(self, request: EnrollmentRequest) -> EnrollResult:
        """The outcome of ``request`` (a refusal is returned, not raised)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[EnrollResult] = loop.create_future()
        self._queue.append((request, future))
        if not self._draining:
            self._draining = True
            self._task = loop.create_task(self._drain(), name="est-enroll-batch")
        # shield: a client that goes away must not cancel the batch's bookkeeping
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        batch: list[tuple[EnrollmentRequest, asyncio.Future[EnrollResult]]] = []
        try:
            while self._queue:
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
                requests = [r for r, _ in batch]
                try:
                    results = await loop.run_in_executor(
                        self._executor, self.service.enroll_many, requests
                    )
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # enroll_many isolates failures; belt and braces
                    results = [exc] * len(batch)
                self.batches += 1
                self.requests += len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
                batch = []
        finally:
            self._draining = False
            # only when the loop shuts down mid-batch: nobody is left waiting forever
            for _, future in batch + self._queue:
                if not future.done():
                    future.cancel()
            self._queue.clear()

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._executor.shutdown(wait=True, cancel_futures=False)
