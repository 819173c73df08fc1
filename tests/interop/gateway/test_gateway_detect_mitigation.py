"""C9 -> C2/C8 against the real broker: a detection rule with the ``drop_session``
mitigation (auto) drops the live paho session of the device whose real traffic tripped
it, leaves the other device's session alone, and revokes nothing (the device may
reconnect). The detection control reaches the gateway through ``app.state.gateway``,
as under ``fleetwarden up``."""

from __future__ import annotations

import time

import pytest
from gw_harness import Device, Harness, needs_broker

from fleetwarden.detect.rules import MitigationSpec, Rule
from fleetwarden.registry import Actor

pytestmark = [pytest.mark.interop, needs_broker]


def _setup(h: Harness) -> None:
    h.add_device("dev1")
    h.add_device("dev2")


@pytest.mark.with_detect
@pytest.mark.gateway_setup.with_args(_setup)
def test_drop_session_mitigation_kicks_the_live_session(harness: Harness) -> None:
    h = harness
    assert h.ctx.app.state.gateway is h.gateway
    rule = Rule(
        name="chatty",
        metric="messages_sent",
        comparison="less-than",  # Device Defender semantics: the expected behaviour
        value=5,
        mitigation=MitigationSpec(action="drop_session", mode="auto"),
    )
    h.detect.store.put_rule(rule, Actor("cli:test"))
    h.detect.reload_rules()
    c1, c2 = h.pki.device("dev1"), h.pki.device("dev2")
    d1, d2 = Device(h, c1), Device(h, c2)
    assert d1.connected.wait(10) and d2.connected.wait(10)
    for _ in range(10):
        d1.client.publish("devices/dev1/telemetry", b"x", qos=1)
    d2.client.publish("devices/dev2/telemetry", b"x", qos=1)
    time.sleep(1.0)  # let the plugin count them
    assert not d1.disconnected.is_set()
    h.run(h.gateway.flush_metrics_now())  # window -> detect -> alert -> mitigation

    assert d1.disconnected.wait(10), "dev1's session was not dropped"
    (alert,) = h.detect.store.list_alerts(device_id="dev1")
    assert alert.mitigation["state"] == "done", alert.mitigation
    assert "dropped" in alert.mitigation["detail"]
    assert h.detect.store.list_alerts(device_id="dev2") == []
    assert d2.client.is_connected() and not d2.disconnected.is_set()
    assert h.gateway.live_revoked == set()  # a drop, not a revocation
    d1.close()
    again = Device(h, c1)  # nothing revoked: the device may come back
    assert again.connected.wait(10)
    again.close()
    d2.close()
