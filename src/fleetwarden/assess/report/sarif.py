"""findings.sarif: SARIF 2.1.0, one rule per check, one result per failing resource.

Device resources have no file, so they are logical locations (kind "device"); bundle
files are physical locations relative to the bundle. MANUAL resources are results of
kind "review". Results are capped per check (``MAX_RESULTS_PER_RULE``) so a million-device
fleet gives a file code-scanning tools can load; findings.json carries the full lists.
"""

from __future__ import annotations

from typing import Any

from fleetwarden import __version__
from fleetwarden.assess.engine import Assessment

MAX_RESULTS_PER_RULE = 1000
LEVEL = {"critical": "error", "high": "error", "medium": "warning", "low": "note", "info": "note"}
SECURITY_SEVERITY = {"critical": "9.5", "high": "8.0", "medium": "5.5", "low": "3.0", "info": "0.5"}


def _location(resource: str, scope: str) -> dict[str, Any]:
    if scope == "device" or ("/" not in resource and "." not in resource.split("#")[0]):
        return {"logicalLocations": [{"name": resource, "kind": "device"}]}
    uri, _, frag = resource.partition("#")
    loc: dict[str, Any] = {
        "physicalLocation": {"artifactLocation": {"uri": uri, "uriBaseId": "BUNDLE"}}
    }
    if frag:
        loc["logicalLocations"] = [{"name": frag, "kind": "member"}]
    return loc


def to_sarif(a: Assessment) -> dict[str, Any]:
    rules = []
    results = []
    for idx, f in enumerate(a.findings):
        tags = ["security", *f.controls, *f.mistakes, *(f"OWASP-{o}" for o in f.owasp)]
        rules.append(
            {
                "id": f.check_id,
                "name": "".join(p.capitalize() for p in f.check_id.split("_")),
                "shortDescription": {"text": f.title},
                "fullDescription": {"text": f.rationale},
                "help": {"text": f.remediation},
                "defaultConfiguration": {"level": LEVEL[f.severity]},
                "properties": {
                    "tags": tags,
                    "security-severity": SECURITY_SEVERITY[f.severity],
                    "etsi": list(f.etsi),
                    "cra": list(f.cra),
                    "nistir": list(f.nistir),
                },
            }
        )
        for kind, items in (("fail", f.resources), ("review", f.manual)):
            for r in items[:MAX_RESULTS_PER_RULE]:
                res: dict[str, Any] = {
                    "ruleId": f.check_id,
                    "ruleIndex": idx,
                    "kind": kind,
                    "message": {
                        "text": f"{f.title}: {r}" + (f" ({f.details[r]})" if r in f.details else "")
                    },
                    "locations": [_location(r, f.scope)],
                }
                if kind == "fail":
                    res["level"] = LEVEL[f.severity]
                    res["properties"] = {"risk_level": f.risk_level, "risk_score": f.risk_score}
                else:
                    res["level"] = "none"
                results.append(res)
    return {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "fleetwarden-assess",
                        "version": __version__,
                        "informationUri": "https://github.com/fleetwarden/fleetwarden",
                        "rules": rules,
                    }
                },
                "originalUriBaseIds": {
                    "BUNDLE": {"uri": "file://" + a.evidence.root.rstrip("/") + "/"}
                },
                "results": results,
            }
        ],
    }
