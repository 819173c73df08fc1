"""Run the catalogue over the evidence: results, suppressions, findings, roll-ups.

Invariants:
- a check whose evidence kinds are not all present is not called; it reports MANUAL with
  the missing kinds (and the unreadable files of those kinds) as the reason;
- a check that raises is a catalogue bug: it reports MANUAL with the error, and the run
  goes on (an audit must not die on one check);
- a FAIL matched by a suppression that has a reason and has not expired is kept in the
  output as suppressed but does not count; expired suppressions are ignored and listed;
- ``danger`` is true exactly when two or more of M1-M4 are present.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleetwarden.assess import frameworks as fw
from fleetwarden.assess import plan as plan_mod
from fleetwarden.assess import risk as risk_mod
from fleetwarden.assess.checks import catalogue
from fleetwarden.assess.checks._util import high_risk
from fleetwarden.assess.checks.transport import exposed, mtls
from fleetwarden.assess.evidence import Evidence
from fleetwarden.assess.model import Check, Result, Status

Progress = Callable[[int, int], None]
#: OWASP items an attacker exploits over the network: internet exposure raises likelihood
REMOTE = frozenset({"I1", "I2", "I3", "I7", "I9"})


class Suppression(BaseModel):
    """``[[suppress]]`` in policy.toml: a FAIL accepted for a reason until a date."""

    model_config = ConfigDict(extra="forbid")
    check: str = Field(min_length=1, max_length=128)
    resource: str = Field(default="*", max_length=256)
    reason: str = Field(min_length=3, max_length=1000)
    expires: date


@dataclass
class Finding:
    check_id: str
    title: str
    status: str  # PASS, FAIL, MANUAL
    severity: str
    effort: str
    controls: tuple[str, ...]
    mistakes: tuple[str, ...]
    owasp: tuple[str, ...]
    etsi: tuple[str, ...]
    cra: tuple[str, ...]
    nistir: tuple[str, ...]
    remediation: str
    rationale: str
    scope: str
    device_defender: str
    plan_task: str | None
    resources: list[str] = field(default_factory=list)
    manual: list[str] = field(default_factory=list)
    suppressed: list[str] = field(default_factory=list)
    passed: int = 0
    details: dict[str, str] = field(default_factory=dict)
    risk_level: str = "note"
    risk_score: float = 0.0
    likelihood: float = 0.0
    impact: float = 0.0


@dataclass
class Assessment:
    evidence: Evidence
    findings: list[Finding]
    #: the FAIL and MANUAL results of each check (PASS results are only counted)
    results: dict[str, list[Result]]
    controls: dict[str, dict[str, Any]]
    mistakes: dict[str, dict[str, Any]]
    owasp: dict[str, dict[str, Any]]
    danger: bool
    plan: list[plan_mod.Task]
    suppression_notes: list[str]
    comparison: dict[str, Any] | None = None

    @property
    def failing(self) -> list[Finding]:
        return [f for f in self.findings if f.status == "FAIL"]


def _suppressions(ev: Evidence) -> tuple[list[Suppression], list[str]]:
    notes: list[str] = []
    out: list[Suppression] = []
    raw = (ev.policy.raw.get("suppress") if ev.policy else None) or []
    if not isinstance(raw, list):
        return [], ["policy.toml: [[suppress]] must be an array of tables"]
    for i, item in enumerate(raw[:10000]):
        try:
            s = Suppression.model_validate(item)
        except ValidationError as exc:
            notes.append(f"suppression #{i + 1} ignored: {exc.errors()[0]['msg']}")
            continue
        if s.expires < ev.now.date():
            notes.append(f"suppression of {s.check} ({s.resource}) expired on {s.expires}")
            continue
        out.append(s)
    return out, notes


def _run_one(check: Check, ev: Evidence) -> tuple[list[Result], int]:
    """The check's FAIL and MANUAL results, and how many resources passed.

    PASS results are counted as they stream by, never stored: on a million-device fleet
    most results are PASS.
    """
    missing = [k for k in check.meta.needs if not ev.has(k)]
    if missing:
        why = [f"missing evidence: {', '.join(missing)}"]
        for k in missing:
            why += [f"{s.path}: {s.reason}" for s in ev.skipped_of(k)[:5]]
        return [Result(Status.MANUAL, "evidence", "; ".join(why))], 0
    kept: list[Result] = []
    passed = 0
    ok = Status.PASS
    try:
        for r in check.fn(ev):
            if r[0] is ok:
                passed += 1
            else:
                kept.append(r)
    except Exception as exc:  # one broken check must not end the audit
        return [Result(Status.MANUAL, "check", f"check error: {type(exc).__name__}: {exc}")], 0
    # partially unreadable evidence: the unreadable files are resources to look at by hand
    for k in check.meta.needs:
        for s in ev.skipped_of(k)[:100]:
            kept.append(Result(Status.MANUAL, s.path, f"unreadable: {s.reason}"))
    return kept, passed


def _fleet_exposed(ev: Evidence) -> bool:
    public = any(d.apn == "public" for d in ev.devices.values())
    open_broker = any(exposed(lst) and not mtls(lst) for b in ev.brokers for lst in b.listeners)
    return public or open_broker


def _rollup(findings: list[Finding], key: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in ids:
        fs = [f for f in findings if item in getattr(f, key)]
        fails = [f for f in fs if f.status == "FAIL"]
        passes = [f for f in fs if f.status == "PASS"]
        if fails:
            severe = any(f.severity in {"critical", "high"} for f in fails)
            status = "fail" if severe or not passes else "partial"
        elif passes:
            status = "pass"
        else:
            status = "manual"
        out[item] = {"status": status, "findings": [f.check_id for f in fails]}
    return out


def assess(
    ev: Evidence, progress: Progress | None = None, checks: list[Check] | None = None
) -> Assessment:
    checks = checks if checks is not None else catalogue()
    sups, notes = _suppressions(ev)
    total_devices = max(1, len(ev.devices))
    exposed_fleet = _fleet_exposed(ev)
    results: dict[str, list[Result]] = {}
    findings: list[Finding] = []
    for i, check in enumerate(checks):
        m = check.meta
        rs, passed = _run_one(check, ev)
        f = Finding(
            check_id=m.id,
            title=m.title,
            status="PASS",
            severity=m.severity.value,
            effort=m.effort.value,
            controls=m.controls,
            mistakes=m.mistakes,
            owasp=m.owasp,
            etsi=m.etsi,
            cra=m.cra,
            nistir=m.nistir,
            remediation=m.remediation,
            rationale=m.rationale,
            scope=m.scope,
            device_defender=m.device_defender,
            plan_task=m.task or None,
        )
        my_sups = [s for s in sups if s.check == m.id]
        for r in rs:
            if r.status is Status.FAIL:
                if any(fnmatch.fnmatchcase(r.resource, s.resource) for s in my_sups):
                    f.suppressed.append(r.resource)
                    continue
                f.resources.append(r.resource)
                if len(f.details) < 20 and r.detail:
                    f.details[r.resource] = r.detail
            elif r.status is Status.MANUAL:
                f.manual.append(r.resource)
                if len(f.details) < 40 and r.detail:
                    f.details.setdefault(r.resource, r.detail)
        f.passed = passed
        results[m.id] = rs
        f.status = "FAIL" if f.resources else ("MANUAL" if f.manual and not f.passed else "PASS")
        findings.append(f)
        if progress is not None:
            progress(i + 1, len(checks))

    mistakes: dict[str, dict[str, Any]] = {}
    for mid in fw.MISTAKES:
        fs = [f for f in findings if mid in f.mistakes and f.status == "FAIL"]
        devs: set[str] = set()
        for f in fs:
            devs.update(r for r in f.resources if r in ev.devices)
            if f.scope == "file":
                products = {
                    img.product.lower() for img in ev.firmware if img.path in set(f.resources)
                }
                if products:
                    devs.update(
                        d.id for d in ev.devices.values() if (d.model or "").lower() in products
                    )
        mistakes[mid] = {
            "present": bool(fs),
            "devices": sorted(devs),
            "findings": [f.check_id for f in fs],
        }
    danger = sum(1 for v in mistakes.values() if v["present"]) >= 2

    for f in findings:
        if f.status != "FAIL":
            continue
        m = next(c.meta for c in checks if c.meta.id == f.check_id)
        dev = [r for r in f.resources if r in ev.devices]
        # blast radius and risk class apply to device findings; configuration findings
        # carry their fleet-wide reach in the check's own impact factor
        share = len(dev) / total_devices if f.scope == "device" else 0.0
        hr = any(high_risk(ev.devices[r]) for r in dev[:100000])
        rk = risk_mod.rate(
            m.likelihood,
            m.impact,
            share=share,
            high_risk=hr,
            exposed=exposed_fleet and bool(set(m.owasp) & REMOTE),
            physical=False,
            compound=danger and bool(f.mistakes),
        )
        f.risk_level, f.risk_score, f.likelihood, f.impact = (
            rk.level,
            rk.score,
            rk.likelihood,
            rk.impact,
        )

    findings.sort(
        key=lambda f: (
            {"FAIL": 0, "MANUAL": 1, "PASS": 2}[f.status],
            not f.mistakes,
            -risk_mod.LEVELS.index(f.risk_level),
            -f.risk_score,
            f.check_id,
        )
    )
    return Assessment(
        evidence=ev,
        findings=findings,
        results=results,
        controls=_rollup(findings, "controls", list(fw.CONTROLS)),
        mistakes=mistakes,
        owasp=_rollup(findings, "owasp", list(fw.OWASP)),
        danger=danger,
        plan=plan_mod.build(findings),
        suppression_notes=notes,
    )
