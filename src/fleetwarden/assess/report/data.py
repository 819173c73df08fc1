"""findings.json: the one document every other output agrees with (schema in docs/assess.md).

Invariant: ``to_json`` is a pure function of the :class:`Assessment`; it holds at least
danger, controls (C1-C10), mistakes (M1-M4), owasp (I1-I10), findings and plan.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fleetwarden import __version__
from fleetwarden.assess.engine import Assessment, Finding

SCHEMA_VERSION = 1


def finding_json(f: Finding) -> dict[str, Any]:
    return {
        "check_id": f.check_id,
        "title": f.title,
        "status": f.status,
        "severity": f.severity,
        "risk_score": f.risk_score,
        "risk_level": f.risk_level,
        "likelihood": f.likelihood,
        "impact": f.impact,
        "controls": list(f.controls),
        "mistakes": list(f.mistakes),
        "owasp": list(f.owasp),
        "etsi": list(f.etsi),
        "cra": list(f.cra),
        "nistir": list(f.nistir),
        "device_defender": f.device_defender or None,
        "scope": f.scope,
        "resources": f.resources,
        "manual_resources": f.manual,
        "suppressed_resources": f.suppressed,
        "passed_resources": f.passed,
        "details": f.details,
        "effort": f.effort,
        "rationale": f.rationale,
        "remediation": f.remediation,
        "plan_task": f.plan_task if f.status == "FAIL" else None,
    }


def to_json(a: Assessment) -> dict[str, Any]:
    ev = a.evidence
    failing = a.failing
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "fleetwarden", "version": __version__},
        "generated_at": ev.now.isoformat(timespec="seconds"),
        "bundle": ev.root,
        "danger": a.danger,
        "summary": {
            "devices": len(ev.devices),
            "checks": len(a.findings),
            "fail": len(failing),
            "manual": sum(1 for f in a.findings if f.status == "MANUAL"),
            "pass": sum(1 for f in a.findings if f.status == "PASS"),
            "by_risk": {
                lvl: sum(1 for f in failing if f.risk_level == lvl)
                for lvl in ("critical", "high", "medium", "low", "note")
            },
        },
        "controls": a.controls,
        "mistakes": a.mistakes,
        "owasp": {
            k: {"status": v["status"], "findings": v["findings"]} for k, v in a.owasp.items()
        },
        "findings": [finding_json(f) for f in a.findings],
        "plan": [asdict(t) for t in a.plan],
        "evidence": {
            "present": sorted(ev.present),
            "unreadable": [
                {"path": s.path, "kind": s.kind, "reason": s.reason} for s in ev.skipped
            ],
            "inventory_problems": ev.inventory_problems,
            "notes": ev.notes,
        },
        "suppression_notes": a.suppression_notes,
        "comparison": a.comparison,
    }
