"""Registry service on SQLite and PostgreSQL: CRUD, rules, events in the outbox."""

from __future__ import annotations

import pytest

from fleetwarden.errors import AuthError, ConflictError, NotFoundError
from fleetwarden.registry import Actor, Registry
from fleetwarden.registry.schemas import (
    DeviceCreate,
    DeviceUpdate,
    GroupCreate,
    GroupUpdate,
    Role,
    TokenCreate,
)

ME = Actor("test:me")


def _ops(reg: Registry) -> list[str]:
    return [p["api"]["operation"] for _, p in reg.pending_events(10_000)]


def test_device_roundtrip_and_defaults(registry: Registry) -> None:
    registry.create_group(GroupCreate(name="meters", allowed_cidrs=["10.1.0.0/16"]), ME)
    out = registry.add_device(
        DeviceCreate.model_validate(
            {
                "device_id": "m-1",
                "model": "EM1",
                "sector": "Energy",
                "allowed_cidrs": ["10.1.2.3/24"],
                "groups": ["meters"],
                "attributes": {"site": "north"},
            }
        ),
        ME,
    )
    assert out.risk_class.value == "medium"
    assert out.key_storage.value == "unknown"
    assert out.sector == "energy"
    assert out.allowed_cidrs == ["10.1.2.0/24"]  # normalised network
    assert out.groups == ["meters"]
    again = registry.get_device("m-1")
    assert again.attributes == {"site": "north"}
    assert again.created_at.tzinfo is not None
    assert registry.get_group("meters").device_count == 1


def test_duplicate_and_unknown(registry: Registry) -> None:
    registry.add_device(DeviceCreate.model_validate({"device_id": "d1"}), ME)
    with pytest.raises(ConflictError):
        registry.add_device(DeviceCreate.model_validate({"device_id": "d1"}), ME)
    with pytest.raises(NotFoundError):
        registry.get_device("nope")
    with pytest.raises(NotFoundError):
        registry.remove_device("nope", ME)
    with pytest.raises(NotFoundError, match="unknown group"):
        registry.add_device(DeviceCreate.model_validate({"device_id": "d2", "groups": ["g"]}), ME)
    # the failed add left nothing behind, not even its event
    assert registry.count_devices() == 1
    assert _ops(registry) == ["device.add"]


def test_update_remove_and_events(registry: Registry) -> None:
    registry.create_group(GroupCreate(name="g1"), ME)
    registry.add_device(DeviceCreate.model_validate({"device_id": "d1"}), ME)
    out = registry.update_device(
        "d1", DeviceUpdate.model_validate({"firmware_version": "1.2", "groups": ["g1"]}), ME
    )
    assert out.firmware_version == "1.2"
    assert out.groups == ["g1"]
    registry.update_group("g1", GroupUpdate(vlan=20), ME)
    registry.set_membership("g1", "d1", False, ME)
    assert registry.get_device("d1").groups == []
    registry.remove_device("d1", ME)
    registry.remove_group("g1", ME)
    assert _ops(registry) == [
        "group.create",
        "device.add",
        "device.update",
        "group.update",
        "group.member.remove",
        "device.remove",
        "group.remove",
    ]
    events = registry.pending_events()
    assert all(
        p["class_uid"] == 6003 and p["actor"]["user"]["name"] == "test:me" for _, p in events
    )
    registry.mark_relayed([i for i, _ in events])
    assert registry.pending_events() == []


def test_list_pagination_and_group_filter(registry: Registry) -> None:
    registry.create_group(GroupCreate(name="odd"), ME)
    for i in range(25):
        groups = ["odd"] if i % 2 else []
        registry.add_device(
            DeviceCreate.model_validate({"device_id": f"d{i:03d}", "groups": groups}), ME
        )
    page1 = registry.list_devices(limit=10)
    page2 = registry.list_devices(limit=10, after=page1[-1].device_id)
    assert [d.device_id for d in page1] == [f"d{i:03d}" for i in range(10)]
    assert page2[0].device_id == "d010"
    odd = registry.list_devices(group="odd", limit=100)
    assert len(odd) == 12
    with pytest.raises(NotFoundError):
        registry.list_devices(group="missing")


def test_group_conflict(registry: Registry) -> None:
    registry.create_group(GroupCreate(name="g"), ME)
    with pytest.raises(ConflictError):
        registry.create_group(GroupCreate(name="g"), ME)


def test_tokens_hashed_shown_once_and_revocable(registry: Registry) -> None:
    created = registry.create_token(TokenCreate(name="ci", role=Role.AUDITOR), ME)
    assert created.token.startswith(f"fwt_{created.id}_")
    secret = created.token.split("_", 2)[2]
    with registry.engine.connect() as conn:
        from sqlalchemy import text

        stored = conn.execute(text("SELECT secret_hash FROM api_tokens")).scalar_one()
    assert secret not in stored and len(stored) == 64
    p = registry.authenticate(created.token)
    assert p.role is Role.AUDITOR
    assert all(not hasattr(t, "token") for t in registry.list_tokens())
    with pytest.raises(AuthError, match="unknown"):
        registry.authenticate(created.token[:-2] + "xx")
    with pytest.raises(AuthError, match="malformed"):
        registry.authenticate("garbage")
    registry.revoke_token(created.id, ME)
    with pytest.raises(AuthError, match="revoked"):
        registry.authenticate(created.token)


def test_expired_token(registry: Registry) -> None:
    from datetime import UTC, datetime, timedelta

    from fleetwarden.registry.models import ApiToken

    created = registry.create_token(TokenCreate(name="t", role=Role.ADMIN, expires_days=1), ME)
    with registry.session() as s:
        s.get(ApiToken, created.id).expires_at = datetime.now(UTC) - timedelta(seconds=1)  # type: ignore[union-attr]
    with pytest.raises(AuthError, match="expired"):
        registry.authenticate(created.token)
