"""``--compare PREVIOUS/findings.json``: what improved and what regressed since then."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fleetwarden.assess.engine import Assessment
from fleetwarden.assess.errors import AssessError, EvidenceError
from fleetwarden.assess.evidence import _io

MAX_PREVIOUS = 2048 * 1024 * 1024


def load_previous(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(_io.read_bytes(path, MAX_PREVIOUS))
    except (OSError, ValueError, RecursionError, EvidenceError) as exc:
        raise AssessError(f"cannot read previous findings {path}: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("findings"), list):
        raise AssessError(f"{path} is not a fleetwarden findings.json")
    return doc


def compare(a: Assessment, prev: dict[str, Any]) -> dict[str, Any]:
    old = {
        f.get("check_id"): f
        for f in prev["findings"]
        if isinstance(f, dict) and isinstance(f.get("check_id"), str)
    }
    improved, regressed, changed = [], [], []
    for f in a.findings:
        o = old.get(f.check_id)
        if o is None:
            continue
        was, now = o.get("status"), f.status
        before = set(o.get("resources") or [])
        after = set(f.resources)
        if was == "FAIL" and now == "PASS":
            improved.append({"check_id": f.check_id, "title": f.title, "closed": len(before)})
        elif was == "PASS" and now == "FAIL":
            regressed.append({"check_id": f.check_id, "title": f.title, "new": len(after)})
        elif was == "FAIL" and now == "FAIL" and before != after:
            changed.append(
                {
                    "check_id": f.check_id,
                    "fixed": len(before - after),
                    "new": len(after - before),
                }
            )
    return {
        "previous_generated_at": prev.get("generated_at"),
        "danger_before": prev.get("danger"),
        "danger_now": a.danger,
        "improved": improved,
        "regressed": regressed,
        "changed": changed,
    }
