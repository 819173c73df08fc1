"""The audit log component on a real in-process bus: every delivery appended once,
malformed ones recorded, checkpoints published to a file and a webhook."""

from __future__ import annotations

import asyncio
import http.server
import threading
from pathlib import Path
from types import SimpleNamespace

from fleetwarden.auditlog.checkpoint import FileAnchor
from fleetwarden.auditlog.component import AuditLogComponent
from fleetwarden.auditlog.note import Verifier, verify_note
from fleetwarden.events import Activity, Event, EventClass, InProcessBus, api_activity
from fleetwarden.settings import load_settings


class _Hook(http.server.BaseHTTPRequestHandler):
    got: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802
        n = int(self.headers["Content-Length"])
        _Hook.got.append(self.rfile.read(n))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *a: object) -> None:
        pass


def test_bus_events_are_logged_once_and_checkpointed(tmp_path: Path) -> None:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{srv.server_address[1]}/anchor"
    data = tmp_path / "data"
    data.mkdir()
    settings = load_settings(
        data,
        auditlog={
            "checkpoint_every": 50,
            "checkpoint_interval": 60,
            "anchor_webhook": hook,
            "max_event_bytes": 2048,
        },
    )

    async def run() -> AuditLogComponent:
        bus = InProcessBus(queue_size=100)
        comp = AuditLogComponent()
        ctx = SimpleNamespace(
            settings=settings,
            bus=bus,
            app=SimpleNamespace(state=SimpleNamespace()),
            urls={},
            api_base="http://127.0.0.1:1",
        )
        await comp.start(ctx)  # type: ignore[arg-type]
        await bus.start()
        evs = [
            api_activity(
                operation="POST /v1/devices", activity=Activity.CREATE, actor="t", message=f"m{i}"
            )
            for i in range(120)
        ]
        for e in evs:
            await bus.publish(e)
        for e in evs[:30]:  # at-least-once redelivery
            await bus.publish(e)
        await bus.publish(
            Event(EventClass.API_ACTIVITY, 1, "bad", data={"x": {1, 2}})
        )  # unserialisable
        await bus.publish(Event(EventClass.API_ACTIVITY, 1, "big", data={"x": "y" * 5000}))
        await bus.publish("not an event")  # type: ignore[arg-type]
        await bus.drain()
        await comp.stop()
        await bus.close()
        return comp

    comp = asyncio.run(run())
    srv.shutdown()
    assert comp.appended == 123 and comp.duplicates == 30
    log_file = data / "auditlog-checkpoints.txt"
    notes = FileAnchor(log_file).read()
    assert notes, "no checkpoint published to the file anchor"
    from fleetwarden.auditlog.service import open_log

    log = open_log(settings.auditlog, data)
    try:
        assert log.store.size() == 123
        kinds = [e.record()["kind"] for e in log.store.entries(0, 123)]
        assert kinds.count("malformed") == 3
        reasons = [e.record()["malformed"]["reason"] for e in log.store.entries(120, 123)]
        assert any("cannot serialise" in r for r in reasons)
        assert any("exceeds the 2048-byte limit" in r for r in reasons)
        assert any("not an Event" in r for r in reasons)
        # the last checkpoint (made at stop) covers everything and verifies
        last = verify_note(notes[-1], log.verifiers())
        assert last.checkpoint.size == 123
        assert log.verify().ok
        # the webhook got the same signed notes
        assert _Hook.got and verify_note(_Hook.got[-1], [Verifier.parse(log.verifiers()[0].text())])
    finally:
        log.close()
