"""Rollouts: deterministic bucketing, thresholds, manual transitions, rollback, events."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import select

from fleetwarden.errors import ValidationError
from fleetwarden.firmware.errors import RolloutError
from fleetwarden.firmware.image import ImageVersion, sign_image
from fleetwarden.firmware.keys import FileSigner, generate_key, public_pem
from fleetwarden.firmware.rollout import (
    Feedback,
    RolloutService,
    Stage,
    assign_groups,
    bucket,
)
from fleetwarden.firmware.service import FirmwareService
from fleetwarden.registry import Actor, Registry
from fleetwarden.registry.models import OutboxEvent
from fleetwarden.registry.schemas import DeviceCreate, GroupCreate
from fleetwarden.settings import Settings

ACTOR = Actor("cli:test")


def test_bucketing_is_deterministic_and_cumulative() -> None:
    devs = [f"dev-{i}" for i in range(2000)]
    assert bucket("p", "dev-1") == bucket("p", "dev-1")
    assert bucket("p", "dev-1") != bucket("q", "dev-1")
    g = assign_groups("p", devs, [Stage.parse("10%"), Stage.parse("50%")])
    assert len(g) == 3
    assert sum(map(len, g)) == 2000
    assert 120 < len(g[0]) < 280 and 650 < len(g[1]) < 950
    # same input, same split; a device keeps its stage when the fleet grows
    assert assign_groups("p", devs, [Stage.parse("10%"), Stage.parse("50%")]) == g
    bigger = assign_groups("p", devs + ["new-1", "new-2"], [Stage.parse("10%")])
    assert set(g[0]) <= set(bigger[0])
    ex = assign_groups("p", devs[:10], [Stage.parse("devices:dev-3,dev-4"), Stage.parse("100")])
    assert ex[0] == ["dev-3", "dev-4"] and len(ex[1]) == 8
    for bad in ("0%", "101", "x", "devices:"):
        with pytest.raises(ValidationError):
            Stage.parse(bad)
    with pytest.raises(ValidationError, match="increasing"):
        assign_groups("p", devs, [Stage.parse("50%"), Stage.parse("10%")])
    with pytest.raises(ValidationError, match="not in the rollout"):
        assign_groups("p", devs, [Stage.parse("devices:nope")])


@pytest.fixture
def setup(registry: Registry, tmp_path: Path) -> RolloutService:
    svc = FirmwareService(registry, Settings(data_dir=tmp_path / "data"))
    svc.repo.init(tmp_path / "rk", passphrase=b"root passphrase")
    key = FileSigner(generate_key("ed25519"))
    svc.add_product("meter", ACTOR)
    svc.trust_key("meter", public_pem(key.public_key()).encode(), ACTOR)
    for i, v in enumerate(("1.0.0", "1.1.0")):
        raw = tmp_path / f"r{v}"
        raw.write_bytes(os.urandom(1000))
        img = tmp_path / f"i{v}"
        sign_image(raw, img, key, version=ImageVersion.parse(v), security_counter=i + 1)
        svc.publish(img, "meter", v, ACTOR)
    registry.create_group(GroupCreate(name="field"), ACTOR)
    for i in range(20):
        registry.add_device(DeviceCreate(device_id=f"m{i:02d}", groups=["field"]), ACTOR)
    return RolloutService(registry)


def _events(registry: Registry, prefix: str) -> list[str]:
    with registry.session() as s:
        ops = [
            e.payload.get("api", {}).get("operation", "")
            for e in s.scalars(select(OutboxEvent).order_by(OutboxEvent.id))
        ]
    return [o for o in ops if o.startswith(prefix)]


def test_staged_rollout_advances_pauses_and_completes(
    setup: RolloutService, registry: Registry
) -> None:
    rs = setup
    out = rs.create(
        "r1",
        "meter",
        "1.1.0",
        ACTOR,
        group="field",
        stages=[Stage.parse("devices:m00,m01"), Stage.parse("50%")],
        success_threshold=100,
        error_threshold=50,
    )
    assert [g["size"] for g in out["groups"]][0] == 2
    assert sum(g["size"] for g in out["groups"]) == 20
    assert rs.pending_for("m00") is not None
    late = next(d for d in (f"m{i:02d}" for i in range(2, 20)) if rs.pending_for(d) is None)
    res = rs.record_feedback([Feedback("m00", "proceeding"), Feedback("m00", "success")])
    assert res.applied == 2 and rs.get("r1")["current_group"] == 0
    res = rs.record_feedback([Feedback("m01", "success"), Feedback("ghost", "success")])
    assert res.ignored == 1
    assert rs.get("r1")["current_group"] == 1
    assert registry.get_device("m00").firmware_version == "1.1.0"
    # second final report for a device is ignored, never double counted
    assert rs.record_feedback([Feedback("m00", "failure")]).ignored == 1
    # errors in group 1 reach 50% -> paused
    g1 = rs.get("r1")["groups"][1]["size"]
    ids = [d for d in (f"m{i:02d}" for i in range(2, 20)) if rs.pending_for(d)]
    assert len(ids) == g1
    rs.record_feedback([Feedback(d, "failure", "boot loop") for d in ids[: (g1 + 1) // 2]])
    assert rs.get("r1")["state"] == "paused"
    assert rs.pending_for(ids[-1]) is None  # paused: nothing offered
    with pytest.raises(RolloutError):
        rs.pause("r1", ACTOR)
    rs.resume("r1", ACTOR)
    rs.record_feedback([Feedback(d, "success") for d in ids[(g1 + 1) // 2 :]])
    # group 1 cannot reach 100% any more: still running on group 1
    assert rs.get("r1")["current_group"] == 1
    rs.cancel("r1", ACTOR)
    assert rs.get("r1")["state"] == "cancelled"
    assert late is not None and rs.pending_for(late) is None
    ops = _events(registry, "firmware.rollout.")
    for t in ("created", "group_started", "paused_on_errors", "resumed", "cancelled"):
        assert f"firmware.rollout.{t}" in ops


def test_completion_stop_and_rollback(setup: RolloutService, registry: Registry) -> None:
    rs = setup
    rs.create("ok", "meter", "1.1.0", ACTOR, devices=["m00", "m01"], success_threshold=50)
    rs.record_feedback([Feedback("m00", "success")])
    assert rs.get("ok")["state"] == "completed"
    rs.create(
        "bad",
        "meter",
        "1.1.0",
        ACTOR,
        devices=["m02", "m03", "m04"],
        error_threshold=30,
        error_action="stop",
    )
    rs.record_feedback([Feedback("m02", "failure")])
    assert rs.get("bad")["state"] == "stopped"
    back = rs.rollback("bad", ACTOR)
    assert back["name"] == "bad-rollback" and back["version"] == "1.0.0"
    assert rs.get("bad")["state"] == "cancelled"
    assert rs.pending_for("m02")["version"] == "1.0.0"  # type: ignore[index]
    assert rs.pending_for("m03") is None
    assert "firmware.rollout.rolled_back" in _events(registry, "firmware.rollout.")
    with pytest.raises(RolloutError):
        rs.rollback("bad-rollback", ACTOR)  # 1.0.0 has no previous release
    with pytest.raises(ValidationError):
        rs.create("none", "meter", "1.1.0", ACTOR)


def test_feedback_batcher_groups_concurrent_reports(
    setup: RolloutService, registry: Registry
) -> None:
    import asyncio

    from fleetwarden.firmware.rollout import FeedbackBatcher

    rs = setup
    devs = [f"m{i:02d}" for i in range(20)]
    rs.create("b", "meter", "1.1.0", ACTOR, devices=devs, success_threshold=100)
    calls: list[int] = []
    real = rs.record_feedback

    def counting(reports, actor="ddi"):  # type: ignore[no-untyped-def]
        calls.append(len(reports))
        return real(reports, actor)

    rs.record_feedback = counting  # type: ignore[method-assign]

    async def main() -> list[bool]:
        b = FeedbackBatcher(rs, linger=0.05)
        b.start()
        try:
            reports = [Feedback(d, "success", actor=f"device:{d}") for d in devs]
            reports.append(Feedback("ghost", "success"))
            return await asyncio.gather(*(b.submit(r) for r in reports))
        finally:
            await b.stop()

    results = asyncio.run(main())
    assert results == [True] * 20 + [False]
    assert sum(calls) == 21 and len(calls) < 21  # batched, not one call per report
    assert rs.get("b")["state"] == "completed"
    with registry.session() as s:
        actors = {
            e.payload.get("actor", {}).get("user", {}).get("name")
            for e in s.scalars(select(OutboxEvent))
            if e.payload["class_uid"] == 5019
        }
    assert "device:m05" in actors
