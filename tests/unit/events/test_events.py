"""Event model (OCSF shape) and the in-process bus semantics."""

from __future__ import annotations

import asyncio
import json

import pytest

from fleetwarden.errors import ValidationError
from fleetwarden.events import (
    Activity,
    Event,
    EventClass,
    InProcessBus,
    Severity,
    api_activity,
    authentication,
    compliance_finding,
    create_bus,
    detection_finding,
    device_config_change,
)
from fleetwarden.events.model import device_config_change_record, new_uid


def _all_kinds() -> list[Event]:
    return [
        api_activity(operation="device.add", activity=Activity.CREATE, actor="a", message="m"),
        authentication(
            device_uid="d1", src_ip="10.0.0.1", success=False, message="bad", protocol="mTLS"
        ),
        device_config_change(device_uid="d1", message="fw", changes={"firmware": "2"}),
        detection_finding(title="burst", uid="f1", severity=Severity.HIGH, device_uid="d1"),
        compliance_finding(
            title="c1", uid="C1-x", severity=Severity.LOW, passed=True, control="C1"
        ),
    ]


@pytest.mark.parametrize("event", _all_kinds(), ids=lambda e: e.class_uid.name)
def test_ocsf_shape_and_roundtrip(event: Event) -> None:
    obj = event.to_ocsf()
    assert obj["type_uid"] == obj["class_uid"] * 100 + obj["activity_id"]
    assert obj["category_uid"] == obj["class_uid"] // 1000
    assert obj["metadata"]["product"]["name"] == "fleetwarden"
    again = Event.from_ocsf(json.loads(json.dumps(obj)))
    assert again == event


def test_auth_failure_defaults() -> None:
    e = authentication(
        device_uid=None, src_ip="1.2.3.4", success=False, message="x", protocol="mTLS"
    )
    assert e.status_id == 2 and e.severity_id == Severity.MEDIUM
    assert e.to_ocsf()["class_name"] == "Authentication"


@pytest.mark.parametrize(
    "bad", [None, [], {}, {"class_uid": 1}, {"class_uid": 6003, "metadata": {}}]
)
def test_malformed_events_rejected(bad: object) -> None:
    with pytest.raises(ValidationError):
        Event.from_ocsf(bad)


async def _collect_run() -> tuple[list[str], list[str], dict[str, dict[str, int]]]:
    bus = InProcessBus(queue_size=4)
    seen_all: list[str] = []
    seen_auth: list[str] = []

    async def everything(e: Event) -> None:
        seen_all.append(e.message)

    async def auth_only(e: Event) -> None:
        if e.message == "boom":
            raise RuntimeError("handler bug")
        seen_auth.append(e.message)

    bus.subscribe("all", everything)
    bus.subscribe("auth", auth_only, classes=[EventClass.AUTHENTICATION])
    await bus.start()
    for i in range(20):  # more than the queue size: publishers wait, nothing is lost
        await bus.publish(
            authentication(
                device_uid="d", src_ip=None, success=True, message=f"a{i}", protocol="mTLS"
            )
        )
    await bus.publish(
        authentication(device_uid="d", src_ip=None, success=True, message="boom", protocol="mTLS")
    )
    await bus.publish(api_activity(operation="x", activity=Activity.READ, actor="a", message="api"))
    await bus.publish(
        authentication(device_uid="d", src_ip=None, success=True, message="after", protocol="mTLS")
    )
    await bus.close()
    return seen_all, seen_auth, bus.stats()


def test_bus_order_filter_backpressure_and_handler_failure() -> None:
    seen_all, seen_auth, stats = asyncio.run(_collect_run())
    assert seen_all == [f"a{i}" for i in range(20)] + ["boom", "api", "after"]
    assert seen_auth == [f"a{i}" for i in range(20)] + ["after"]
    assert stats["auth"]["failures"] == 1


def test_bus_rejects_duplicate_names_and_closed_publish() -> None:
    async def run() -> None:
        bus = InProcessBus()

        async def h(_: Event) -> None:
            return None

        bus.subscribe("x", h)
        with pytest.raises(ValueError, match="already"):
            bus.subscribe("x", h)
        await bus.start()
        await bus.close()
        with pytest.raises(RuntimeError):
            await bus.publish(_all_kinds()[0])

    asyncio.run(run())


def test_create_bus() -> None:
    from fleetwarden.errors import ConfigError

    assert isinstance(create_bus("memory://"), InProcessBus)
    with pytest.raises(ConfigError):
        create_bus("kafka://x")


def test_bus_publish_survives_a_subscribe_while_it_waits() -> None:
    """`up` starts the outbox relay before the components that subscribe: a subscriber
    added while a publish waits on a full queue must not abort that publish half-way."""

    async def run() -> list[str]:
        bus = InProcessBus(queue_size=1)
        seen: list[str] = []
        release = asyncio.Event()

        async def slow(e: Event) -> None:
            await release.wait()
            seen.append(e.message)

        async def other(_: Event) -> None:
            return None

        bus.subscribe("slow", slow)
        bus.subscribe("b", other)
        await bus.start()
        ev = [
            authentication(device_uid="d", src_ip=None, success=True, message=m, protocol="x")
            for m in ("1", "2", "3")
        ]
        await bus.publish(ev[0])  # taken by the handler, which now waits
        await bus.publish(ev[1])  # fills the queue of size 1
        pending = asyncio.create_task(bus.publish(ev[2]))  # waits on slow's full queue
        await asyncio.sleep(0.01)
        bus.subscribe("late", other)  # the dict changes while publish() waits
        release.set()
        await pending  # no RuntimeError: dictionary changed size during iteration
        await bus.close()
        return seen

    assert asyncio.run(run()) == ["1", "2", "3"]


def test_event_uids_are_random_version_4_uuids() -> None:
    import uuid

    uids = {new_uid() for _ in range(2000)}
    assert len(uids) == 2000
    for u in list(uids)[:200]:
        parsed = uuid.UUID(u)
        assert str(parsed) == u
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
    assert Event(EventClass.API_ACTIVITY, 1, "m").uid != Event(EventClass.API_ACTIVITY, 1, "m").uid


@pytest.mark.parametrize("actor", ["op", None])
def test_a_record_built_without_the_event_is_the_events_own_form(actor: str | None) -> None:
    changes = {"identity_event": "certificate.issued", "certificate": {"serial": "ab"}}
    ev = device_config_change(device_uid="d1", actor=actor, message="m", changes=changes)
    rec = device_config_change_record(device_uid="d1", actor=actor, message="m", changes=changes)
    assert rec["metadata"]["uid"] != ev.uid
    assert abs(rec["time"] - ev.time) < 5_000
    same = ev.to_ocsf()
    for form in (same, rec):
        form["metadata"]["uid"] = "u"
        form["time"] = 0
    assert rec == same
    back = Event.from_ocsf(json.loads(json.dumps(rec)))
    assert back.device_uid == "d1" and back.actor == actor and back.to_ocsf() == rec
    # each record is its own: no nested part is shared with the next one
    other = device_config_change_record(device_uid="d2", message="m", changes={})
    other["metadata"]["product"]["name"] = "changed"
    assert rec["metadata"]["product"]["name"] == "fleetwarden"
