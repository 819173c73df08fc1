"""The 90-day remediation plan, generated from the failing findings.

Invariants: every task closes at least one failing finding (except the closing
re-audit); a task starts only after the tasks it depends on end (dependencies on tasks
with nothing to do are dropped); tasks closing critical or compound (M1-M4) findings are
scheduled from day 0, others not before their phase's first day; no task ends after day
90 (a task that would is clipped and flagged ``compressed``). Phases: 0-30 contain,
31-60 harden, 61-90 sustain, taken from the start day.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fleetwarden.assess.engine import Finding


@dataclass(frozen=True)
class TaskDef:
    title: str
    floor: int  # earliest start day when not urgent
    depends_on: tuple[str, ...]
    owner: str
    evidence: str


TASKS: dict[str, TaskDef] = {
    "contain_shared_credentials": TaskDef(
        "Contain shared credentials and default passwords",
        0,
        (),
        "<security lead>",
        "Re-assessment: M1 checks PASS; broker password file with unique $7$ hashes; no keys "
        "or credentials in images.",
    ),
    "contain_exposure": TaskDef(
        "Close anonymous access and public exposure of the broker",
        0,
        (),
        "<platform owner>",
        "mosquitto.conf with allow_anonymous false; nft ruleset allowing 8883 only from fleet "
        "CIDRs; no anonymous connections in a week of logs.",
    ),
    "logging_on": TaskDef(
        "Turn broker logging and connection messages on",
        0,
        (),
        "<platform owner>",
        "mosquitto.conf log_dest/connection_messages; a day of connection logs shipped to "
        "the audit log.",
    ),
    "incident_plan": TaskDef(
        "Write the incident plan with the 24 h / 72 h reporting runbook",
        0,
        (),
        "<incident lead>",
        "docs/incident-plan.md with roles, contacts, isolation and revocation steps, "
        "reporting clocks and 'Last review:' date.",
    ),
    "inventory_hygiene": TaskDef(
        "Complete the device inventory (key storage, last seen, invalid rows)",
        0,
        (),
        "<fleet operations>",
        "inventory import with no invalid rows; key_storage and last_seen on every device.",
    ),
    "per_device_pki": TaskDef(
        "Per-device PKI: one key and certificate per device from the fleet CA",
        31,
        (),
        "<PKI owner>",
        "Every device certificate unique, chained to cas/, sound keys (no ROCA/Debian/short), "
        "shared and revoked certificates revoked in the CRL.",
    ),
    "secure_element": TaskDef(
        "Keys into secure elements for high-risk devices",
        31,
        ("per_device_pki",),
        "<hardware lead>",
        "inventory key_storage=secure_element|tpm for every high-risk device.",
    ),
    "mtls_everywhere": TaskDef(
        "Mutual TLS on every broker listener, CRL enforced",
        31,
        ("per_device_pki",),
        "<platform owner>",
        "mosquitto.conf listeners with cafile, require_certificate true, "
        "use_identity_as_username true, TLS >= 1.2; a TLS probe showing client certs required.",
    ),
    "private_apn": TaskDef(
        "Private APN with VPN and fixed device IPs",
        31,
        (),
        "<connectivity owner>",
        "inventory apn=private and ip_fixed=true for every device; carrier APN contract.",
    ),
    "firewall": TaskDef(
        "Default-drop firewall allowing only fleet CIDRs",
        31,
        ("private_apn",),
        "<network owner>",
        "nft list ruleset with input policy drop and per-CIDR accepts.",
    ),
    "segmentation": TaskDef(
        "Segment devices: IoT VLANs and per-device MQTT topics",
        31,
        ("mtls_everywhere",),
        "<network owner>",
        "VLAN table and inventory agree; ACL with pattern rules on %u, no '#' for devices.",
    ),
    "signed_firmware": TaskDef(
        "Signed firmware with anti-rollback (MCUboot)",
        31,
        (),
        "<firmware lead>",
        "Every image signed and verifying against firmware/keys, security counter monotonic.",
    ),
    "update_devices": TaskDef(
        "Update devices and vulnerable components",
        31,
        ("signed_firmware",),
        "<firmware lead>",
        "inventory firmware_version >= minimum; SBOMs with no OSV matches.",
    ),
    "harden_devices": TaskDef(
        "Harden devices: secure boot on, debug ports and insecure services off",
        31,
        ("signed_firmware",),
        "<hardware lead>",
        "inventory secure_boot=true, debug_ports_enabled=false, no insecure open_ports; "
        "release images without telnetd/gdbserver.",
    ),
    "alert_rules": TaskDef(
        "Anomaly alert rules routed to on-call",
        31,
        ("logging_on",),
        "<SOC lead>",
        "policy.toml [alerting] rules and destinations; a test alert received.",
    ),
    "rotation_schedule": TaskDef(
        "Key rotation schedule over the air",
        61,
        ("per_device_pki", "mtls_everywhere"),
        "<PKI owner>",
        "policy.toml [rotation] interval_days; no certificate older than the interval.",
    ),
    "tabletop": TaskDef(
        "Tabletop exercise of the incident plan",
        61,
        ("incident_plan",),
        "<incident lead>",
        "Exercise report; 'Last exercise:' date in the plan.",
    ),
    "sbom": TaskDef(
        "SBOM for every firmware release",
        61,
        (),
        "<firmware lead>",
        "A CycloneDX SBOM in sbom/ per image.",
    ),
    "cvd_policy": TaskDef(
        "Publish disclosure policy and support period",
        61,
        (),
        "<product owner>",
        "security.txt and disclosure policy published; support period >= 5 years stated.",
    ),
    "privacy": TaskDef(
        "Personal data minimisation and retention",
        61,
        (),
        "<data protection officer>",
        "policy.toml [privacy] with retention; deletion job in place.",
    ),
}
REAUDIT = "reaudit"
CALENDAR_DAYS = {"S": 5, "M": 10, "L": 20}


@dataclass
class Task:
    id: str
    title: str
    phase: str
    start_day: int
    end_day: int
    depends_on: list[str]
    findings: list[str]
    owner: str
    effort: str
    evidence_of_done: str
    urgent: bool = False
    compressed: bool = False
    refs: dict[str, list[str]] = field(default_factory=dict)


def phase_of(day: int) -> str:
    return "0-30" if day < 31 else "31-60" if day < 61 else "61-90"


def build(findings: list[Finding]) -> list[Task]:
    failing = [f for f in findings if f.status == "FAIL"]
    by_task: dict[str, list[Finding]] = {}
    for f in failing:
        by_task.setdefault(f.plan_task or REAUDIT, []).append(f)
    by_task.pop(REAUDIT, None)
    order = [t for t in TASKS if t in by_task]
    urgent_set = {
        t for t in order if any(f.risk_level == "critical" or f.mistakes for f in by_task[t])
    }
    # a task that urgent work waits for is urgent too
    for tid in reversed(order):
        if tid in urgent_set:
            urgent_set.update(x for x in TASKS[tid].depends_on if x in by_task)
    ends: dict[str, int] = {}
    tasks: list[Task] = []
    # TASKS is declared in dependency order, so one pass schedules every dependency first
    for tid in order:
        d = TASKS[tid]
        fs = by_task[tid]
        urgent = tid in urgent_set
        deps = [x for x in d.depends_on if x in ends]
        start = max([0 if urgent else d.floor, *(ends[x] + 1 for x in deps)])
        effort = max((f.effort for f in fs), key=lambda e: CALENDAR_DAYS[e])
        end = start + CALENDAR_DAYS[effort]
        compressed = end > 89
        if compressed:
            start, end = min(start, 84), 89
        ends[tid] = end
        refs: dict[str, list[str]] = {}
        for key in ("controls", "mistakes", "owasp", "etsi", "cra"):
            refs[key] = sorted({r for f in fs for r in getattr(f, key)})
        tasks.append(
            Task(
                id=tid,
                title=d.title,
                phase=phase_of(start),
                start_day=start,
                end_day=end,
                depends_on=deps,
                findings=sorted(f.check_id for f in fs),
                owner=d.owner,
                effort=effort,
                evidence_of_done=d.evidence,
                urgent=urgent,
                compressed=compressed,
                refs=refs,
            )
        )
    tasks.sort(key=lambda t: (t.start_day, not t.urgent, t.end_day))
    tasks.append(
        Task(
            id=REAUDIT,
            title="Re-audit the fleet and compare with this assessment",
            phase="61-90",
            start_day=85,
            end_day=90,
            depends_on=[t.id for t in tasks],
            findings=[],
            owner="<auditor>",
            effort="S",
            evidence_of_done="fleetwarden assess --compare <this>/findings.json shows the "
            "findings above closed.",
        )
    )
    return tasks
