"""The firmware component of ``fleetwarden up``: serves the TUF repository as static
files under ``/tuf``, keeps the online roles (timestamp, snapshot) fresh, and batches
DDI feedback into few transactions.

Invariant: a refresh failure is logged and retried at the next interval; it never stops
the service (clients keep working until the old timestamp expires).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool
from starlette.staticfiles import StaticFiles

from fleetwarden.firmware.rollout import FeedbackBatcher, RolloutService
from fleetwarden.firmware.service import repository_for

if TYPE_CHECKING:
    from fleetwarden.service import Context

log = logging.getLogger(__name__)


class FirmwareComponent:
    name = "firmware"

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    async def start(self, ctx: Context) -> None:
        self._ctx = ctx
        repo = repository_for(ctx.settings)
        repo.metadata_dir.mkdir(parents=True, exist_ok=True)
        repo.targets_dir.mkdir(parents=True, exist_ok=True)
        # Consistent snapshots: every file name is immutable, so plain static serving
        # (here, or any CDN) is correct.
        ctx.app.mount("/tuf", StaticFiles(directory=str(repo.path)), name="tuf")
        base = ctx.api_base
        ctx.urls["TUF"] = f"{base}/tuf/metadata/"
        ctx.urls["DDI"] = f"{base}/{ctx.settings.firmware.ddi_tenant}/controller/v1/"
        self._task = asyncio.create_task(self._run(), name="firmware-tuf-refresh")
        self._batcher = FeedbackBatcher(RolloutService(ctx.registry))
        self._batcher.start()
        ctx.app.state.feedback_batcher = self._batcher

    async def refresh_once(self) -> list[str]:
        repo = repository_for(self._ctx.settings)
        if not repo.initialised:
            return []
        done = await run_in_threadpool(repo.refresh)
        if done:
            log.info("TUF: re-signed %s", ", ".join(done))
        return done

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep serving; the next round retries
                log.warning("TUF refresh failed: %s", exc)
            await asyncio.sleep(self._ctx.settings.firmware.refresh_interval_seconds)

    async def stop(self) -> None:
        batcher = getattr(self, "_batcher", None)
        if batcher is not None:
            await batcher.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
