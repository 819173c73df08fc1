"""The device agent against the managed broker: mTLS, telemetry, jittered reconnect."""

from __future__ import annotations

import random
import time

import pytest
from gw_harness import Harness, needs_broker

from fleetwarden.events import EventClass
from fleetwarden.gateway.agent import AgentConfig, TelemetryAgent, backoff_delays

pytestmark = [pytest.mark.interop, needs_broker]


def test_backoff_is_jittered_and_capped() -> None:
    d = backoff_delays(0.5, 4.0, random.Random(1))
    vals = [next(d) for _ in range(12)]
    assert all(0 <= v <= 4.0 for v in vals)
    assert len({round(v, 6) for v in vals}) == len(vals)


def test_agent_publishes_and_reconnects_after_broker_restart(harness: Harness) -> None:
    h = harness
    cert = h.add_device("meter-1")
    h.reload()
    agent = TelemetryAgent(
        AgentConfig(
            device_id="meter-1",
            host="localhost",
            port=h.port,
            ca_file=h.pki.chain_path,
            cert_file=cert.cert_path,
            key_file=cert.key_path,
            backoff_base_s=0.2,
            backoff_cap_s=1.0,
        )
    )
    agent.start()
    try:
        assert agent.connected.wait(10)
        for i in range(5):
            assert agent.publish({"kwh": i})
        time.sleep(0.6)  # one plugin flush (200 ms in tests)
        sup = h.gateway.supervisor
        assert sup is not None
        h.run(sup.kill())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and agent.connects < 2:
            time.sleep(0.1)
        assert agent.connects >= 2
        assert agent.connected.wait(5) and agent.publish({"kwh": 99})
        time.sleep(1.0)
        h.run(h.gateway.flush_metrics_now())
        recs = [
            e.data["unmapped"]["fleetwarden_metrics"]
            for e in h.events
            if e.class_uid == EventClass.NETWORK_ACTIVITY and e.device_uid == "meter-1"
        ]
        assert sum(r["messages_sent"] for r in recs) == 6
        assert sum(r["connections"] for r in recs) == 2
        assert "devices/meter-1/telemetry" in {t for r in recs for t in r["topics"]}
    finally:
        agent.stop()
