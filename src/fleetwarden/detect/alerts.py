"""Alerts in the registry: dedup, suppression with expiry, lifecycle, verification.

Lifecycle: ``open`` -> ``acknowledged`` -> ``resolved`` (``open`` -> ``resolved`` too);
``resolved`` is final, a later signal with the same key opens a new alert. Verification
(``unverified``, ``true_positive``, ``benign``, ``false_positive``) is set when resolving
or at any time after.

Invariants:
- every alert change and the OCSF Detection Finding (2004) describing it commit in one
  transaction (registry outbox), so the bus, the audit log and the sinks see exactly
  the alerts the registry holds;
- at most one unresolved alert per ``(device, key)``: a repeat signal bumps ``count``
  and ``last_seen`` (and severity, upwards only) and emits no new finding unless the
  severity rose;
- a suppressed signal writes nothing but a counter: suppression is the operator's
  statement that this is known, and must not flood the outbox.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from fleetwarden.detect.engine import Signal
from fleetwarden.detect.errors import AlertNotFoundError, AlertStateError
from fleetwarden.detect.models import DetectAlert, DetectRule, DetectSuppression
from fleetwarden.detect.rules import AlertSeverity, Rule
from fleetwarden.events import Event, EventClass, Severity
from fleetwarden.registry import Actor, Registry


class AlertStatus(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class Verification(StrEnum):
    UNVERIFIED = "unverified"
    TRUE_POSITIVE = "true_positive"
    BENIGN = "benign"
    FALSE_POSITIVE = "false_positive"


_SEV = {
    "low": Severity.LOW,
    "medium": Severity.MEDIUM,
    "high": Severity.HIGH,
    "critical": Severity.CRITICAL,
}
_RANK = {s.value: i for i, s in enumerate(AlertSeverity)}
# OCSF Detection Finding activity ids and finding status ids
_CREATE, _UPDATE, _CLOSE = 1, 2, 3
_FSTATUS = {"open": (1, "New"), "acknowledged": (2, "In Progress"), "resolved": (4, "Resolved")}


class AlertOut(BaseModel):
    id: str
    device_id: str | None
    key: str
    severity: AlertSeverity
    title: str
    status: AlertStatus
    verification: Verification
    evidence: dict[str, Any]
    count: int
    window_start: int
    first_seen: datetime
    last_seen: datetime
    acknowledged_by: str | None
    resolved_by: str | None
    note: str | None
    mitigation: dict[str, Any]


class SuppressionOut(BaseModel):
    id: int
    device_id: str | None
    key_prefix: str | None
    reason: str
    created_by: str
    expires_at: datetime


class ResolveBody(BaseModel):
    verification: Verification = Verification.UNVERIFIED
    note: str | None = Field(default=None, max_length=2000)


class SuppressBody(BaseModel):
    device_id: str | None = Field(default=None, max_length=128)
    key_prefix: str | None = Field(default=None, max_length=160)
    minutes: int = Field(ge=1, le=60 * 24 * 90)
    reason: str = Field(min_length=1, max_length=500)


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def _out(a: DetectAlert) -> AlertOut:
    return AlertOut(
        id=a.id,
        device_id=a.device_id,
        key=a.key,
        severity=AlertSeverity(a.severity),
        title=a.title,
        status=AlertStatus(a.status),
        verification=Verification(a.verification),
        evidence=dict(a.evidence or {}),
        count=a.count,
        window_start=a.window_start,
        first_seen=_aware(a.first_seen),
        last_seen=_aware(a.last_seen),
        acknowledged_by=a.acknowledged_by,
        resolved_by=a.resolved_by,
        note=a.note,
        mitigation=dict(a.mitigation or {}),
    )


def finding_event(a: DetectAlert, activity: int, actor: str | None = None) -> Event:
    """The OCSF Detection Finding (2004) for an alert's current state."""
    sid, sname = _FSTATUS[a.status]
    return Event(
        class_uid=EventClass.DETECTION_FINDING,
        activity_id=activity,
        message=a.title,
        severity_id=_SEV.get(a.severity, Severity.MEDIUM),
        actor=actor,
        device_uid=a.device_id,
        data={
            "finding_info": {
                "uid": a.id,
                "title": a.title,
                "types": [a.key.split(":", 1)[0]],
                "analytic": {"name": a.key, "type_id": 1 if a.key.startswith("rule:") else 6},
                "first_seen_time": int(_aware(a.first_seen).timestamp() * 1000),
                "last_seen_time": int(_aware(a.last_seen).timestamp() * 1000),
            },
            "evidences": [{"data": dict(a.evidence or {})}],
            "status": sname,
            "finding_status_id": sid,
            "count": a.count,
            "unmapped": {
                "verification": a.verification,
                "mitigation": dict(a.mitigation or {}),
                "control": "C9",
            },
        },
    )


class AlertStore:
    """Alert persistence on the registry (SQLite or PostgreSQL)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.suppressed = 0

    # detector side -------------------------------------------------------------------

    def _suppressed(self, s: Session, sig: Signal, now: datetime) -> bool:
        q = (
            select(func.count())
            .select_from(DetectSuppression)
            .where(DetectSuppression.expires_at > now)
            .where(
                or_(
                    DetectSuppression.device_id.is_(None),
                    DetectSuppression.device_id == sig.device_id,
                )
            )
            .where(
                or_(
                    DetectSuppression.key_prefix.is_(None),
                    func.substr(sig.key, 1, func.length(DetectSuppression.key_prefix))
                    == DetectSuppression.key_prefix,
                )
            )
        )
        return bool(s.scalar(q))

    def apply(self, sig: Signal, *, now: datetime | None = None) -> AlertOut | None:
        """Store one detector signal; return the alert it opened or updated (None if it
        was suppressed or was a clear with nothing open)."""
        now = now or datetime.now(UTC)
        dedup = f"{sig.device_id}|{sig.key}"
        with self.registry.session() as s:
            current = s.scalar(
                select(DetectAlert)
                .where(DetectAlert.dedup_key == dedup)
                .where(DetectAlert.status != AlertStatus.RESOLVED.value)
                .limit(1)
            )
            if sig.kind == "clear":
                if current is None:
                    return None
                current.status = AlertStatus.RESOLVED.value
                current.resolved_by = "detector (rule cleared)"
                current.updated_at = now
                self.registry.record(s, finding_event(current, _CLOSE))
                return _out(current)
            if self._suppressed(s, sig, now):
                self.suppressed += 1
                return None
            if current is not None:
                current.count += 1
                current.last_seen = now
                current.updated_at = now
                if _RANK[sig.severity.value] > _RANK[current.severity]:
                    current.severity = sig.severity.value
                    current.evidence = dict(sig.evidence)
                    self.registry.record(s, finding_event(current, _UPDATE))
                return _out(current)
            alert = DetectAlert(
                id=uuid.uuid4().hex,
                dedup_key=dedup,
                device_id=sig.device_id,
                key=sig.key,
                severity=sig.severity.value,
                title=sig.title[:1000],
                status=AlertStatus.OPEN.value,
                verification=Verification.UNVERIFIED.value,
                evidence=dict(sig.evidence),
                count=1,
                window_start=sig.start,
                first_seen=now,
                last_seen=now,
                updated_at=now,
                mitigation=(
                    {
                        "action": sig.mitigation.action.value,
                        "mode": sig.mitigation.mode,
                        "state": "pending_approval"
                        if sig.mitigation.mode == "approval"
                        else "pending",
                    }
                    if sig.mitigation is not None
                    else {}
                ),
            )
            s.add(alert)
            self.registry.record(s, finding_event(alert, _CREATE))
            s.flush()
            return _out(alert)

    def set_mitigation(self, alert_id: str, state: dict[str, Any], actor: Actor) -> AlertOut:
        with self.registry.session() as s:
            a = self._get(s, alert_id)
            a.mitigation = {**(a.mitigation or {}), **state}
            a.updated_at = datetime.now(UTC)
            self.registry.record(s, finding_event(a, _UPDATE, actor.name))
            return _out(a)

    # operator side -------------------------------------------------------------------

    @staticmethod
    def _get(s: Session, alert_id: str) -> DetectAlert:
        a = s.get(DetectAlert, alert_id)
        if a is None:
            raise AlertNotFoundError(f"unknown alert {alert_id!r}")
        return a

    def get(self, alert_id: str) -> AlertOut:
        with self.registry.session() as s:
            return _out(self._get(s, alert_id))

    def list_alerts(
        self,
        *,
        status: AlertStatus | None = None,
        device_id: str | None = None,
        severity: AlertSeverity | None = None,
        limit: int = 100,
    ) -> list[AlertOut]:
        with self.registry.session() as s:
            q = select(DetectAlert).order_by(DetectAlert.last_seen.desc()).limit(limit)
            if status is not None:
                q = q.where(DetectAlert.status == status.value)
            if device_id is not None:
                q = q.where(DetectAlert.device_id == device_id)
            if severity is not None:
                q = q.where(DetectAlert.severity == severity.value)
            return [_out(a) for a in s.scalars(q)]

    def acknowledge(self, alert_id: str, actor: Actor) -> AlertOut:
        with self.registry.session() as s:
            a = self._get(s, alert_id)
            if a.status != AlertStatus.OPEN.value:
                raise AlertStateError(
                    f"alert {alert_id} is {a.status}; only open alerts can be acknowledged"
                )
            a.status = AlertStatus.ACKNOWLEDGED.value
            a.acknowledged_by = actor.name
            a.updated_at = datetime.now(UTC)
            self.registry.record(s, finding_event(a, _UPDATE, actor.name))
            return _out(a)

    def resolve(
        self,
        alert_id: str,
        actor: Actor,
        *,
        verification: Verification = Verification.UNVERIFIED,
        note: str | None = None,
    ) -> AlertOut:
        with self.registry.session() as s:
            a = self._get(s, alert_id)
            if a.status == AlertStatus.RESOLVED.value:
                raise AlertStateError(f"alert {alert_id} is already resolved")
            a.status = AlertStatus.RESOLVED.value
            a.resolved_by = actor.name
            a.verification = verification.value
            if note:
                a.note = note
            a.updated_at = datetime.now(UTC)
            self.registry.record(s, finding_event(a, _CLOSE, actor.name))
            return _out(a)

    def verify(self, alert_id: str, verification: Verification, actor: Actor) -> AlertOut:
        with self.registry.session() as s:
            a = self._get(s, alert_id)
            a.verification = verification.value
            a.updated_at = datetime.now(UTC)
            self.registry.record(s, finding_event(a, _UPDATE, actor.name))
            return _out(a)

    def suppress(self, body: SuppressBody, actor: Actor) -> SuppressionOut:
        if body.device_id is None and body.key_prefix is None:
            from fleetwarden.errors import ValidationError

            raise ValidationError("a suppression needs a device, a key prefix or both")
        now = datetime.now(UTC)
        with self.registry.session() as s:
            sup = DetectSuppression(
                device_id=body.device_id,
                key_prefix=body.key_prefix,
                reason=body.reason,
                created_by=actor.name,
                created_at=now,
                expires_at=now + timedelta(minutes=body.minutes),
            )
            s.add(sup)
            from fleetwarden.events import Activity, api_activity

            self.registry.record(
                s,
                api_activity(
                    operation="alerts.suppress",
                    activity=Activity.CREATE,
                    actor=actor.name,
                    message=(
                        f"alerts suppressed for {body.minutes} min: device={body.device_id} "
                        f"key={body.key_prefix}: {body.reason}"
                    ),
                    src_ip=actor.src_ip,
                    device_uid=body.device_id,
                ),
            )
            s.flush()
            return SuppressionOut(
                id=sup.id,
                device_id=sup.device_id,
                key_prefix=sup.key_prefix,
                reason=sup.reason,
                created_by=sup.created_by,
                expires_at=_aware(sup.expires_at),
            )

    def suppressions(self, *, include_expired: bool = False) -> list[SuppressionOut]:
        with self.registry.session() as s:
            q = select(DetectSuppression).order_by(DetectSuppression.id)
            if not include_expired:
                q = q.where(DetectSuppression.expires_at > datetime.now(UTC))
            return [
                SuppressionOut(
                    id=x.id,
                    device_id=x.device_id,
                    key_prefix=x.key_prefix,
                    reason=x.reason,
                    created_by=x.created_by,
                    expires_at=_aware(x.expires_at),
                )
                for x in s.scalars(q)
            ]

    # rules declared through the API --------------------------------------------------

    def put_rule(self, rule: Rule, actor: Actor) -> Rule:
        from fleetwarden.events import Activity, api_activity

        with self.registry.session() as s:
            row = s.get(DetectRule, rule.name)
            if row is None:
                s.add(DetectRule(name=rule.name, definition=rule.model_dump(mode="json")))
            else:
                row.definition = rule.model_dump(mode="json")
                row.updated_at = datetime.now(UTC)
            self.registry.record(
                s,
                api_activity(
                    operation="detect.rule.put",
                    activity=Activity.UPDATE if row else Activity.CREATE,
                    actor=actor.name,
                    message=f"detection rule {rule.name} saved",
                    src_ip=actor.src_ip,
                    resources=[{"type": "detect_rule", "uid": rule.name}],
                ),
            )
        return rule

    def delete_rule(self, name: str, actor: Actor) -> None:
        from fleetwarden.errors import NotFoundError
        from fleetwarden.events import Activity, api_activity

        with self.registry.session() as s:
            row = s.get(DetectRule, name)
            if row is None:
                raise NotFoundError(f"unknown rule {name!r}")
            s.delete(row)
            self.registry.record(
                s,
                api_activity(
                    operation="detect.rule.delete",
                    activity=Activity.DELETE,
                    actor=actor.name,
                    message=f"detection rule {name} deleted",
                    src_ip=actor.src_ip,
                    resources=[{"type": "detect_rule", "uid": name}],
                ),
            )

    def rules(self) -> list[Rule]:
        with self.registry.session() as s:
            return [
                Rule.model_validate(r.definition)
                for r in s.scalars(select(DetectRule).order_by(DetectRule.name))
            ]
