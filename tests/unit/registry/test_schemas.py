"""Validation at the edge: what a device or group may look like."""

from __future__ import annotations

import pydantic
import pytest

from fleetwarden.registry.schemas import DeviceCreate, GroupCreate


@pytest.mark.parametrize(
    "bad",
    [
        {"device_id": ""},
        {"device_id": "a/b"},
        {"device_id": "a+b"},
        {"device_id": "#"},
        {"device_id": "x" * 129},
        {"device_id": "ok", "vlan": 0},
        {"device_id": "ok", "vlan": 4095},
        {"device_id": "ok", "ip": "300.1.1.1"},
        {"device_id": "ok", "allowed_cidrs": ["10.0.0.0/33"]},
        {"device_id": "ok", "risk_class": "extreme"},
        {"device_id": "ok", "key_storage": "paper"},
        {"device_id": "ok", "apn": "semi"},
        {"device_id": "ok", "unknown_field": 1},
        {"device_id": "ok", "groups": ["bad name"]},
        {"device_id": "ok", "sector": "Health Care"},
    ],
)
def test_device_refusals(bad: dict[str, object]) -> None:
    with pytest.raises(pydantic.ValidationError):
        DeviceCreate.model_validate(bad)


def test_device_accepts_ipv6_and_normalises() -> None:
    d = DeviceCreate.model_validate(
        {"device_id": "dev:01@site", "ip": " 2001:db8::1 ", "allowed_cidrs": ["2001:db8::/32"]}
    )
    assert d.ip == "2001:db8::1"
    assert d.allowed_cidrs == ["2001:db8::/32"]


def test_group_name() -> None:
    with pytest.raises(pydantic.ValidationError):
        GroupCreate(name="has space")
