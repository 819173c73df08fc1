"""When the gateway recompiles the broker policy: a burst of registry changes costs a
bounded number of recompiles (``policy_min_interval_s``), events that cannot change
``policy.tsv`` (a certificate issued) cost none, a real change still reaches the file,
and a revocation is written at once whatever the refresh loop is doing.

The gateway runs here without a broker (no control client: the plugin kick is a no-op);
the compile, the registry and the files are real. The broker side is covered in
tests/interop/gateway."""

from __future__ import annotations

import asyncio
import types
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from fleetwarden.events import Activity, api_activity, device_config_change
from fleetwarden.gateway.brokerconf import BrokerFiles
from fleetwarden.gateway.config import GatewaySettings
from fleetwarden.gateway.service import Gateway
from fleetwarden.registry import Registry, schemas
from fleetwarden.registry.service import Actor

ACTOR = Actor("cli:test")


def _gateway(registry: Registry, tmp_path: Path, min_interval: float) -> Gateway:
    gw = Gateway()
    gw.ctx = types.SimpleNamespace(  # type: ignore[assignment]
        registry=registry, settings=types.SimpleNamespace(data_dir=tmp_path)
    )
    gw.gs = GatewaySettings(policy_min_interval_s=min_interval, policy_refresh_s=3600)
    gw.files = BrokerFiles(
        conf=tmp_path / "mosquitto.conf",
        plugin=tmp_path / "plugin.so",
        policy=tmp_path / "policy.tsv",
        revoked=tmp_path / "revoked.txt",
        ca=tmp_path / "ca.pem",
        cert=tmp_path / "cert.pem",
        key=tmp_path / "key.pem",
    )
    gw._live_path = tmp_path / "revoked-live.txt"
    return gw


def _run(gw: Gateway, body: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        gw._write_policy()  # as start() does before the loop runs
        task = asyncio.create_task(gw._refresh_loop())
        try:
            await body()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


async def _until(cond: Callable[[], bool], deadline_s: float = 10.0) -> None:
    """Poll for ``cond`` (a generous deadline, not a timing assertion)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not cond():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.01)


def _device_edit(device_id: str) -> object:
    return api_activity(
        operation="device.update",
        activity=Activity.UPDATE,
        actor="cli:test",
        message=f"device {device_id} updated",
        device_uid=device_id,
    )


def test_burst_of_changes_is_coalesced(registry: Registry, tmp_path: Path) -> None:
    registry.add_device(schemas.DeviceCreate(device_id="d1"), ACTOR)
    gw = _gateway(registry, tmp_path, min_interval=0.5)

    async def body() -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        sent = 0
        while loop.time() - start < 1.0:  # two intervals' worth of events
            await gw._on_device_change(_device_edit("d1"))  # type: ignore[arg-type]
            sent += 1
            await asyncio.sleep(0.002)
        elapsed = loop.time() - start
        await _until(lambda: not gw._policy_dirty.is_set())
        await _until(lambda: not gw._policy_lock.locked())
        compiles = gw.policy_compiles
        assert sent > 50
        # one at once, then at most one per interval (+1 for the one the burst leaves)
        assert 1 <= compiles <= int(elapsed / 0.5) + 2, (sent, compiles, elapsed)

    _run(gw, body)


def test_without_interval_every_change_may_compile(registry: Registry, tmp_path: Path) -> None:
    """The limit is what bounds the count: with 0, sequential changes compile each."""
    registry.add_device(schemas.DeviceCreate(device_id="d1"), ACTOR)
    gw = _gateway(registry, tmp_path, min_interval=0)

    async def body() -> None:
        for i in range(5):
            await gw._on_device_change(_device_edit("d1"))  # type: ignore[arg-type]
            await _until(lambda i=i: gw.policy_compiles == i + 1)  # type: ignore[misc]

    _run(gw, body)


def test_registry_change_reaches_policy_file(registry: Registry, tmp_path: Path) -> None:
    registry.add_device(schemas.DeviceCreate(device_id="d1"), ACTOR)
    registry.create_group(schemas.GroupCreate(name="apn", allowed_cidrs=["100.64.0.0/10"]), ACTOR)
    gw = _gateway(registry, tmp_path, min_interval=0.5)

    async def body() -> None:
        assert "100.64.0.0/10" not in gw.files.policy.read_text()
        await gw._on_device_change(_device_edit("d1"))  # type: ignore[arg-type]
        # a second change right after the first: it lands inside the interval
        registry.set_membership("apn", "d1", True, ACTOR)
        await gw._on_device_change(_device_edit("d1"))  # type: ignore[arg-type]
        await _until(lambda: "100.64.0.0/10" in gw.files.policy.read_text())
        line = next(
            ln for ln in gw.files.policy.read_text().splitlines() if ln.startswith("D\td1\t")
        )
        assert line.split("\t")[4] == "apn"

    _run(gw, body)


def test_issued_certificate_does_not_recompile(registry: Registry, tmp_path: Path) -> None:
    gw = _gateway(registry, tmp_path, min_interval=0)
    issued = device_config_change(
        device_uid="d1",
        message="certificate 1f issued to d1 via est",
        changes={"identity_event": "certificate.issued", "certificate": {"serial": "1f"}},
    )
    status = device_config_change(
        device_uid="d1", message="status", changes={"status": {"old": "active", "new": "lost"}}
    )

    async def body() -> None:
        await gw._on_device_change(issued)
        assert not gw._policy_dirty.is_set()
        await gw._on_device_change(status)  # anything else still recompiles
        assert gw._policy_dirty.is_set()

    asyncio.run(body())


def test_revocation_is_not_held_by_the_interval(registry: Registry, tmp_path: Path) -> None:
    registry.add_device(schemas.DeviceCreate(device_id="d1"), ACTOR)
    gw = _gateway(registry, tmp_path, min_interval=60)  # the loop would hold changes 60 s
    revoked = device_config_change(
        device_uid="d1",
        message="certificate ab revoked",
        changes={"identity_event": "certificate.revoked", "serials": ["ab"]},
    )

    async def body() -> None:
        await gw._on_device_change(_device_edit("d1"))  # type: ignore[arg-type]
        await _until(lambda: gw.policy_compiles == 1)
        await gw._on_device_change(_device_edit("d1"))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)  # the loop is now pausing for the interval
        await gw._on_device_change(revoked)
        # written when the handler returns, not at the next compile
        assert "ab" in gw.files.revoked.read_text().split()
        assert gw.policy_compiles == 1 and gw._policy_dirty.is_set()

    _run(gw, body)


def test_min_interval_setting_is_bounded() -> None:
    assert GatewaySettings().policy_min_interval_s == 1.0
    assert GatewaySettings(policy_min_interval_s=0).policy_min_interval_s == 0
    for bad in (-0.1, 61, "soon"):
        with pytest.raises(ValidationError, match="policy_min_interval_s"):
            GatewaySettings(policy_min_interval_s=bad)
