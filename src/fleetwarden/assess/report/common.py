"""Text shared by the human-readable reports."""

from __future__ import annotations

from fleetwarden.assess import frameworks as fw
from fleetwarden.assess.engine import Assessment


def danger_line(a: Assessment) -> str:
    present = [m for m, v in a.mistakes.items() if v["present"]]
    names = "; ".join(f"{m} {fw.MISTAKES[m]}" for m in present)
    return (
        f"This fleet is in serious danger: {len(present)} of the four mistakes are present "
        f"({names})."
    )


def headline(a: Assessment) -> str:
    failing = a.failing
    crit = sum(1 for f in failing if f.risk_level == "critical")
    high = sum(1 for f in failing if f.risk_level == "high")
    manual = sum(1 for f in a.findings if f.status == "MANUAL")
    return (
        f"{len(a.evidence.devices)} devices assessed with {len(a.findings)} checks: "
        f"{len(failing)} failing ({crit} critical, {high} high), {manual} need manual review, "
        f"{len(a.evidence.skipped)} evidence files unreadable."
    )
