"""One event model for every security-relevant fact, shaped after OCSF 1.3.

An :class:`Event` is an immutable record with the OCSF base attributes (class, activity,
severity, status, time, message, metadata) and a class-specific payload. ``to_ocsf()``
gives the canonical OCSF JSON object; ``from_ocsf()`` reads it back, so events can cross
process boundaries (NATS JetStream, the outbox table, SIEM export) without loss.

Invariants: ``type_uid == class_uid * 100 + activity_id``; ``uid`` is unique per event;
``time`` is milliseconds since the epoch, UTC.
"""

from __future__ import annotations

import os
import time as _time
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from fleetwarden import __version__
from fleetwarden.errors import ValidationError

OCSF_VERSION = "1.3.0"


class EventClass(IntEnum):
    """The OCSF classes fleetwarden emits."""

    COMPLIANCE_FINDING = 2003
    DETECTION_FINDING = 2004
    AUTHENTICATION = 3002
    NETWORK_ACTIVITY = 4001
    DEVICE_CONFIG_STATE_CHANGE = 5019
    API_ACTIVITY = 6003

    @property
    def category_uid(self) -> int:
        return self.value // 1000

    @property
    def class_name(self) -> str:
        return _CLASS_NAMES[self]


_CLASS_NAMES = {
    EventClass.COMPLIANCE_FINDING: "Compliance Finding",
    EventClass.DETECTION_FINDING: "Detection Finding",
    EventClass.AUTHENTICATION: "Authentication",
    EventClass.NETWORK_ACTIVITY: "Network Activity",
    EventClass.DEVICE_CONFIG_STATE_CHANGE: "Device Config State Change",
    EventClass.API_ACTIVITY: "API Activity",
}
_CATEGORY_NAMES = {
    2: "Findings",
    3: "Identity & Access Management",
    4: "Network Activity",
    5: "Discovery",
    6: "Application Activity",
}
#: the leading OCSF attributes of each class, computed once (``Event.to_ocsf``)
_CLASS_FIELDS: dict[EventClass, dict[str, Any]] = {
    c: {
        "class_uid": int(c),
        "class_name": c.class_name,
        "category_uid": c.category_uid,
        "category_name": _CATEGORY_NAMES[c.category_uid],
    }
    for c in EventClass
}
_PRODUCT = {"name": "fleetwarden", "vendor_name": "fleetwarden", "version": __version__}


class Severity(IntEnum):
    UNKNOWN = 0
    INFORMATIONAL = 1
    LOW = 2
    MEDIUM = 3
    HIGH = 4
    CRITICAL = 5
    FATAL = 6


class Status(IntEnum):
    UNKNOWN = 0
    SUCCESS = 1
    FAILURE = 2


class Activity(IntEnum):
    """Activity ids of API Activity, Device Config State Change and the findings."""

    UNKNOWN = 0
    CREATE = 1
    READ = 2
    UPDATE = 3
    DELETE = 4
    OTHER = 99


class AuthActivity(IntEnum):
    """Activity ids of the Authentication class."""

    UNKNOWN = 0
    LOGON = 1
    LOGOFF = 2
    OTHER = 99


#: a hex digit with its two high bits set to 10 (the UUID variant of RFC 4122)
_VARIANT = {d: format(0x8 | (int(d, 16) & 0x3), "x") for d in "0123456789abcdef"}


def new_uid() -> str:
    """A random (version 4) UUID in its text form: what ``str(uuid.uuid4())`` gives, in
    half the time (every event gets one; the issuance path makes one per certificate)."""
    h = os.urandom(16).hex()
    # the version nibble is 4; the variant's two high bits are 10 (RFC 4122)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


@dataclass(frozen=True, slots=True)
class Event:
    """A security-relevant fact. Build one with the helpers in ``fleetwarden.events``."""

    class_uid: EventClass
    activity_id: int
    message: str
    severity_id: Severity = Severity.INFORMATIONAL
    status_id: Status = Status.SUCCESS
    time: int = field(default_factory=lambda: int(_time.time() * 1000))
    uid: str = field(default_factory=new_uid)
    actor: str | None = None
    device_uid: str | None = None
    src_ip: str | None = None
    #: class-specific OCSF attributes (``api``, ``finding_info``, ``auth_protocol``, ...)
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def type_uid(self) -> int:
        return int(self.class_uid) * 100 + int(self.activity_id)

    def to_ocsf(self) -> dict[str, Any]:
        return ocsf_record(
            self.class_uid,
            self.activity_id,
            self.message,
            severity_id=self.severity_id,
            status_id=self.status_id,
            time=self.time,
            uid=self.uid,
            actor=self.actor,
            device_uid=self.device_uid,
            src_ip=self.src_ip,
            data=self.data,
        )

    @classmethod
    def from_ocsf(cls, obj: Any) -> Event:
        """Rebuild an event from its OCSF form; raise ``ValidationError`` when malformed."""
        if not isinstance(obj, dict):
            raise ValidationError("event must be a JSON object")
        try:
            klass = EventClass(int(obj["class_uid"]))
            meta = obj["metadata"]
            known = {
                "class_uid",
                "class_name",
                "category_uid",
                "category_name",
                "activity_id",
                "type_uid",
                "time",
                "severity_id",
                "status_id",
                "message",
                "metadata",
                "actor",
                "device",
                "src_endpoint",
            }
            actor = obj.get("actor", {}).get("user", {}).get("name")
            device = obj.get("device", {}).get("uid")
            src_ip = obj.get("src_endpoint", {}).get("ip")
            return cls(
                class_uid=klass,
                activity_id=int(obj["activity_id"]),
                message=str(obj["message"]),
                severity_id=Severity(int(obj.get("severity_id", 1))),
                status_id=Status(int(obj.get("status_id", 0))),
                time=int(obj["time"]),
                uid=str(meta["uid"]),
                actor=None if actor is None else str(actor),
                device_uid=None if device is None else str(device),
                src_ip=None if src_ip is None else str(src_ip),
                data={k: v for k, v in obj.items() if k not in known},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValidationError(f"malformed OCSF event: {exc!r}") from exc


def api_activity(
    *,
    operation: str,
    activity: Activity,
    actor: str,
    message: str,
    status: Status = Status.SUCCESS,
    resources: list[dict[str, Any]] | None = None,
    src_ip: str | None = None,
    device_uid: str | None = None,
    severity: Severity = Severity.INFORMATIONAL,
) -> Event:
    """OCSF 6003: an administrative call (API or CLI) and its outcome."""
    data: dict[str, Any] = {"api": {"operation": operation}}
    if resources:
        data["resources"] = resources
    return Event(
        class_uid=EventClass.API_ACTIVITY,
        activity_id=int(activity),
        message=message,
        status_id=status,
        severity_id=severity,
        actor=actor,
        src_ip=src_ip,
        device_uid=device_uid,
        data=data,
    )


def authentication(
    *,
    device_uid: str | None,
    src_ip: str | None,
    success: bool,
    message: str,
    protocol: str,
    activity: AuthActivity = AuthActivity.LOGON,
    severity: Severity | None = None,
    extra: dict[str, Any] | None = None,
) -> Event:
    """OCSF 3002: a device or user authenticating (or failing to)."""
    data: dict[str, Any] = {"auth_protocol": protocol}
    if extra:
        data.update(extra)
    return Event(
        class_uid=EventClass.AUTHENTICATION,
        activity_id=int(activity),
        message=message,
        status_id=Status.SUCCESS if success else Status.FAILURE,
        severity_id=severity
        if severity is not None
        else (Severity.INFORMATIONAL if success else Severity.MEDIUM),
        device_uid=device_uid,
        src_ip=src_ip,
        data=data,
    )


def ocsf_record(
    class_uid: EventClass,
    activity_id: int,
    message: str,
    *,
    severity_id: Severity = Severity.INFORMATIONAL,
    status_id: Status = Status.SUCCESS,
    time: int | None = None,
    uid: str | None = None,
    actor: str | None = None,
    device_uid: str | None = None,
    src_ip: str | None = None,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The OCSF form of an event: what ``Event(...).to_ocsf()`` gives for the same fields
    (the one place that shape is written). Producers that only store the payload call it
    directly, without the intermediate ``Event``; issuance writes one per certificate."""
    activity = int(activity_id)
    out: dict[str, Any] = {
        **_CLASS_FIELDS[class_uid],
        "activity_id": activity,
        "type_uid": int(class_uid) * 100 + activity,
        "time": int(_time.time() * 1000) if time is None else time,
        "severity_id": int(severity_id),
        "status_id": int(status_id),
        "message": message,
        "metadata": {
            "uid": new_uid() if uid is None else uid,
            "version": OCSF_VERSION,
            "product": dict(_PRODUCT),
        },
    }
    if actor is not None:
        out["actor"] = {"user": {"name": actor}}
    if device_uid is not None:
        out["device"] = {"uid": device_uid, "type_id": 7}  # 7 = IOT
    if src_ip is not None:
        out["src_endpoint"] = {"ip": src_ip}
    if data:
        for key, value in data.items():
            out.setdefault(key, value)
    return out


def _device_config_change_fields(
    device_uid: str, message: str, actor: str | None, changes: dict[str, Any]
) -> dict[str, Any]:
    return {
        "class_uid": EventClass.DEVICE_CONFIG_STATE_CHANGE,
        "activity_id": int(Activity.UPDATE),
        "message": message,
        "actor": actor,
        "device_uid": device_uid,
        "data": {"unmapped": {"changes": changes}},
    }


#: the attributes every device config change record has the same: those
#: :func:`ocsf_record` gives one without a time, message, actor, device or data
_DCC_FIXED = {
    k: v
    for k, v in ocsf_record(
        EventClass.DEVICE_CONFIG_STATE_CHANGE, int(Activity.UPDATE), "", time=0, uid=""
    ).items()
    if k not in ("time", "message", "metadata")
}


def device_config_change_record(
    *, device_uid: str, message: str, actor: str | None = None, changes: dict[str, Any]
) -> dict[str, Any]:
    """``device_config_change(...).to_ocsf()`` without the intermediate ``Event``, its
    fixed attributes computed once: issuance writes one per certificate. The rest is
    what :func:`ocsf_record` writes for these fields (in another order, which JSON does
    not keep anyway); a test checks the two agree."""
    out = {
        **_DCC_FIXED,
        "time": int(_time.time() * 1000),
        "message": message,
        "metadata": {"uid": new_uid(), "version": OCSF_VERSION, "product": dict(_PRODUCT)},
    }
    if actor is not None:
        out["actor"] = {"user": {"name": actor}}
    out["device"] = {"uid": device_uid, "type_id": 7}  # 7 = IOT
    out["unmapped"] = {"changes": changes}
    return out


def device_config_change(
    *, device_uid: str, message: str, actor: str | None = None, changes: dict[str, Any]
) -> Event:
    """OCSF 5019: a device's configuration or state changed (firmware, cert, group)."""
    return Event(**_device_config_change_fields(device_uid, message, actor, changes))


def detection_finding(
    *,
    title: str,
    uid: str,
    severity: Severity,
    device_uid: str | None = None,
    src_ip: str | None = None,
    activity: Activity = Activity.CREATE,
    evidence: dict[str, Any] | None = None,
) -> Event:
    """OCSF 2004: an anomaly or rule hit."""
    data: dict[str, Any] = {"finding_info": {"uid": uid, "title": title}}
    if evidence:
        data["evidences"] = [evidence]
    return Event(
        class_uid=EventClass.DETECTION_FINDING,
        activity_id=int(activity),
        message=title,
        severity_id=severity,
        device_uid=device_uid,
        src_ip=src_ip,
        data=data,
    )


def compliance_finding(
    *,
    title: str,
    uid: str,
    severity: Severity,
    passed: bool,
    control: str,
    device_uid: str | None = None,
) -> Event:
    """OCSF 2003: a check's result against a control."""
    return Event(
        class_uid=EventClass.COMPLIANCE_FINDING,
        activity_id=int(Activity.CREATE),
        message=title,
        severity_id=severity,
        status_id=Status.SUCCESS if passed else Status.FAILURE,
        device_uid=device_uid,
        data={
            "finding_info": {"uid": uid, "title": title},
            "compliance": {"control": control, "status": "Pass" if passed else "Fail"},
        },
    )
