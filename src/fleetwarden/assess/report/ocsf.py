"""findings.ocsf.jsonl: one OCSF Compliance Finding (class 2003) per check, per line.

Built with :func:`fleetwarden.events.compliance_finding` so the shape matches what the
running control plane emits; the assessment adds the framework references
(``compliance.requirements``, ``compliance.standards``) and up to ``MAX_RESOURCES``
affected resources.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

from fleetwarden.assess.engine import Assessment
from fleetwarden.events import Severity, compliance_finding

MAX_RESOURCES = 1000
_SEV = {
    "critical": Severity.CRITICAL,
    "high": Severity.HIGH,
    "medium": Severity.MEDIUM,
    "low": Severity.LOW,
    "info": Severity.INFORMATIONAL,
}


def lines(a: Assessment) -> Iterator[str]:
    for f in a.findings:
        ev = compliance_finding(
            title=f.title,
            uid=f.check_id,
            severity=_SEV[f.severity],
            passed=f.status == "PASS",
            control=",".join(f.controls) or ",".join(f.owasp),
            device_uid=f.resources[0] if len(f.resources) == 1 and f.scope == "device" else None,
        )
        data = dict(ev.data)
        # OCSF compliance.status_id: 1 Pass, 3 Fail, 99 Other (MANUAL: needs a person)
        status, status_id = {"PASS": ("Pass", 1), "FAIL": ("Fail", 3), "MANUAL": ("Manual", 99)}[
            f.status
        ]
        data["compliance"] = {
            **data["compliance"],
            "status": status,
            "status_id": status_id,
            "requirements": [*f.controls, *f.mistakes, *f.owasp],
            "standards": [
                *(f"ETSI EN 303 645 {x}" for x in f.etsi),
                *(f"CRA Annex I {x}" if not x.startswith("Art") else f"CRA {x}" for x in f.cra),
                *(f"NISTIR 8259A {x}" for x in f.nistir),
                "OWASP IoT Top 10 2018",
            ],
        }
        data["resources"] = [{"uid": r, "type": f.scope} for r in f.resources[:MAX_RESOURCES]]
        data["unmapped"] = {
            "resources_total": len(f.resources),
            "risk_level": f.risk_level,
            "risk_score": f.risk_score,
            "remediation": f.remediation,
        }
        data["remediation"] = {"desc": f.remediation}
        ev = dataclasses.replace(ev, data=data)
        yield json.dumps(ev.to_ocsf(), separators=(",", ":"))
