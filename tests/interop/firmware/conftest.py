from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import fleetwarden.firmware.models  # noqa: F401  (registers the firmware tables)
from fleetwarden.registry import Registry
from fleetwarden.settings import Settings


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The control plane (``serve``) in a thread, on an ephemeral port.

    Devices authenticate with a hawkBit target token here (``Authorization: TargetToken
    <device id>``) standing in for the TLS client certificate the identity control
    verifies: the DDI routes only see the device id the authenticator returns.
    """

    def authenticator(req: Any) -> str | None:
        h = req.headers.get("authorization", "")
        return h.split(" ", 1)[1] if h.lower().startswith("targettoken ") else None

    import socket

    from fleetwarden.service import Context, serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(data_dir=tmp_path / "data", api_port=port)
    settings.data_dir.mkdir()
    reg = Registry.open(f"sqlite:///{tmp_path / 'reg.db'}")
    ready = threading.Event()
    ctxs: list[Context] = []

    def on_ready(ctx: Context) -> None:
        ctx.app.state.device_authenticator = authenticator
        ctxs.append(ctx)
        ready.set()

    loop = asyncio.new_event_loop()
    task: list[asyncio.Task[None]] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        task.append(loop.create_task(serve(settings, reg, on_ready=on_ready)))
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(task[0])

    th = threading.Thread(target=run, daemon=True)
    th.start()
    assert ready.wait(30)
    yield {
        "settings": settings,
        "registry": reg,
        "base": f"http://127.0.0.1:{port}",
        "ctx": ctxs[0],
    }
    loop.call_soon_threadsafe(task[0].cancel)
    th.join(15)
    reg.close()
