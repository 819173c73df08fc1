"""The outbox relay: every committed row reaches the bus once relayed, in order; a
damaged row becomes a finding on the bus instead of vanishing."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fleetwarden.api import create_app
from fleetwarden.events import Event, EventClass, InProcessBus
from fleetwarden.registry import Actor, Registry
from fleetwarden.registry.models import OutboxEvent
from fleetwarden.registry.schemas import DeviceCreate
from fleetwarden.service import Context, OutboxRelay
from fleetwarden.settings import load_settings


def test_relay_publishes_in_order_and_reports_damage(registry: Registry, tmp_path: Path) -> None:
    registry.add_device(DeviceCreate.model_validate({"device_id": "a"}), Actor("t"))
    with registry.session() as s:
        s.add(OutboxEvent(payload={"class_uid": 6003, "garbage": True}))
    registry.add_device(DeviceCreate.model_validate({"device_id": "b"}), Actor("t"))
    seen: list[Event] = []

    async def run() -> None:
        bus = InProcessBus()

        async def collect(e: Event) -> None:
            seen.append(e)

        bus.subscribe("test", collect)
        await bus.start()
        settings = load_settings(tmp_path)
        ctx = Context(
            settings=settings, registry=registry, bus=bus, app=create_app(settings, registry)
        )
        relay = OutboxRelay()
        relay._ctx = ctx
        assert await relay.relay_once() == 3
        assert await relay.relay_once() == 0
        await bus.close()

    asyncio.run(run())
    assert [e.class_uid for e in seen] == [
        EventClass.API_ACTIVITY,
        EventClass.DETECTION_FINDING,
        EventClass.API_ACTIVITY,
    ]
    assert seen[0].device_uid == "a" and seen[2].device_uid == "b"
    assert "not a valid event" in seen[1].message
    assert registry.pending_events() == []
