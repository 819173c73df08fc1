"""Alerts in the registry (SQLite and PostgreSQL): dedup, suppression, lifecycle,
verification, Detection Findings in the outbox, API-declared rules, mitigations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fleetwarden.detect.alerts import AlertStatus, AlertStore, SuppressBody, Verification
from fleetwarden.detect.engine import Signal
from fleetwarden.detect.errors import AlertNotFoundError, AlertStateError
from fleetwarden.detect.mitigation import mitigations
from fleetwarden.detect.rules import AlertSeverity, MitigationSpec, Rule
from fleetwarden.detect.service import run_mitigation
from fleetwarden.errors import NotFoundError, ValidationError
from fleetwarden.registry import Actor, Registry
from fleetwarden.registry.schemas import DeviceCreate

OP = Actor("cli:tester")


def sig(kind: str = "alarm", key: str = "rule:auth", dev: str = "d1", **kw: object) -> Signal:
    return Signal(
        kind=kind,  # type: ignore[arg-type]
        device_id=dev,
        key=key,
        start=1_800_000_000,
        severity=kw.pop("severity", AlertSeverity.MEDIUM),  # type: ignore[arg-type]
        title="auth failures",
        evidence={"value": 9},
        **kw,  # type: ignore[arg-type]
    )


def findings(registry: Registry) -> list[dict]:
    return [p for _, p in registry.pending_events(10_000) if p["class_uid"] == 2004]


def test_dedup_and_severity_escalation(registry: Registry) -> None:
    store = AlertStore(registry)
    a = store.apply(sig())
    assert a is not None and a.status == AlertStatus.OPEN
    b = store.apply(sig())
    assert b is not None and b.id == a.id and b.count == 2
    assert len(findings(registry)) == 1  # a repeat is not a new finding
    c = store.apply(sig(severity=AlertSeverity.CRITICAL))
    assert c is not None and c.severity == AlertSeverity.CRITICAL
    ev = findings(registry)
    assert [e["activity_id"] for e in ev] == [1, 2]
    assert ev[0]["finding_info"]["uid"] == a.id and ev[0]["device"]["uid"] == "d1"
    assert ev[0]["evidences"][0]["data"] == {"value": 9}
    # another key or device is another alert
    assert store.apply(sig(key="rule:other")).id != a.id  # type: ignore[union-attr]
    assert store.apply(sig(dev="d2")).id != a.id  # type: ignore[union-attr]


def test_lifecycle_and_verification(registry: Registry) -> None:
    store = AlertStore(registry)
    a = store.apply(sig())
    assert a is not None
    acked = store.acknowledge(a.id, OP)
    assert acked.status == AlertStatus.ACKNOWLEDGED and acked.acknowledged_by == OP.name
    with pytest.raises(AlertStateError):
        store.acknowledge(a.id, OP)
    done = store.resolve(a.id, OP, verification=Verification.BENIGN, note="maintenance")
    assert done.status == AlertStatus.RESOLVED and done.verification == Verification.BENIGN
    with pytest.raises(AlertStateError):
        store.resolve(a.id, OP)
    assert store.verify(a.id, Verification.TRUE_POSITIVE, OP).verification == "true_positive"
    # resolved is final: the same signal opens a new alert
    again = store.apply(sig())
    assert again is not None and again.id != a.id
    with pytest.raises(AlertNotFoundError):
        store.get("nope")
    assert [x.id for x in store.list_alerts(status=AlertStatus.RESOLVED)] == [a.id]
    assert findings(registry)[-1]["activity_id"] == 1
    closes = [e for e in findings(registry) if e["activity_id"] == 3]
    assert closes[0]["status"] == "Resolved" and closes[0]["actor"]["user"]["name"] == OP.name


def test_rule_clear_resolves(registry: Registry) -> None:
    store = AlertStore(registry)
    a = store.apply(sig())
    assert store.apply(sig(kind="clear", dev="other")) is None
    cleared = store.apply(sig(kind="clear"))
    assert cleared is not None and cleared.id == a.id  # type: ignore[union-attr]
    assert cleared.status == AlertStatus.RESOLVED


def test_suppression_with_expiry(registry: Registry) -> None:
    store = AlertStore(registry)
    store.suppress(SuppressBody(device_id="d1", key_prefix="rule:", minutes=10, reason="work"), OP)
    assert store.apply(sig()) is None
    assert store.apply(sig(key="novelty:topic")) is not None  # other key prefix
    assert store.apply(sig(dev="d2")) is not None  # other device
    later = datetime.now(UTC) + timedelta(minutes=11)
    assert store.apply(sig(), now=later) is not None  # expired
    assert store.suppressed == 1
    with pytest.raises(ValidationError):
        store.suppress(SuppressBody(minutes=1, reason="x"), OP)
    assert len(store.suppressions()) == 1


def test_api_rules_round_trip(registry: Registry) -> None:
    store = AlertStore(registry)
    r = Rule(name="auth", metric="auth_failures", comparison="less-than", value=5)
    store.put_rule(r, OP)
    store.put_rule(r.model_copy(update={"value": 7.0}), OP)
    assert [x.value for x in store.rules()] == [7.0]
    store.delete_rule("auth", OP)
    assert store.rules() == []
    with pytest.raises(NotFoundError):
        store.delete_rule("auth", OP)


def test_quarantine_mitigation_and_absent_services(registry: Registry) -> None:
    registry.add_device(DeviceCreate(device_id="d1"), OP)  # type: ignore[call-arg]
    store = AlertStore(registry)
    mits = mitigations(registry)
    a = store.apply(sig(mitigation=MitigationSpec(action="quarantine", mode="approval")))
    assert a is not None and a.mitigation["state"] == "pending_approval"
    done = run_mitigation(store, mits, a.id, OP)
    assert done.mitigation["state"] == "done"
    assert "quarantine" in registry.get_device("d1").groups
    b = store.apply(sig(key="rule:x", mitigation=MitigationSpec(action="revoke_certificate")))
    assert b is not None
    out = run_mitigation(store, mits, b.id, OP)
    assert out.mitigation["state"] == "not_wired" and "no fleet CA" in out.mitigation["detail"]
    c = store.apply(sig(key="rule:y", mitigation=MitigationSpec(action="drop_session")))
    assert run_mitigation(store, mits, c.id, OP).mitigation["state"] == "not_wired"  # type: ignore[union-attr]
    plain = store.apply(sig(key="baseline:volume"))
    with pytest.raises(ValidationError, match="no mitigation"):
        run_mitigation(store, mits, plain.id, OP)  # type: ignore[union-attr]


def test_service_forgets_removed_devices(registry: Registry, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fleetwarden.detect.config import DetectSettings
    from fleetwarden.detect.engine import Detector
    from fleetwarden.detect.metrics import Intake, MetricWindow
    from fleetwarden.detect.service import DetectService

    for d in ("a", "b"):
        registry.add_device(DeviceCreate(device_id=d), OP)  # type: ignore[call-arg]
    svc = DetectService(DetectSettings(), tmp_path)
    svc.detector = Detector([])
    svc.refresh_devices(registry)
    svc.intake = Intake(svc._known.__contains__)
    for d in ("a", "b"):
        svc.detector.process(MetricWindow(device_id=d, start=0, messages_sent=1))
    assert set(svc.detector.baselines.devices) == {"a", "b"}
    registry.remove_device("b", OP)
    svc.refresh_devices(registry)
    assert set(svc.detector.baselines.devices) == {"a"}
    assert svc._known == {"a"}
