"""report.md: the same content as the HTML report, for diffs and chat."""

from __future__ import annotations

from fleetwarden.assess import frameworks as fw
from fleetwarden.assess.engine import Assessment
from fleetwarden.assess.report.common import danger_line, headline


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(a: Assessment) -> str:
    out: list[str] = []
    if a.danger:
        out.append(f"**{danger_line(a)}**")
        out.append("")
    out.append("# Fleet security assessment")
    out.append("")
    out.append(headline(a))
    out.append("")
    out.append("## Control scorecard")
    out.append("")
    out.append("| control | status | failing checks |")
    out.append("|---|---|---|")
    for cid, v in a.controls.items():
        out.append(f"| {cid} {fw.CONTROLS[cid]} | {v['status']} | {', '.join(v['findings'])} |")
    out.append("")
    out.append("| mistake | present | devices |")
    out.append("|---|---|---|")
    for mid, v in a.mistakes.items():
        present = "yes" if v["present"] else "no"
        out.append(f"| {mid} {fw.MISTAKES[mid]} | {present} | {len(v['devices'])} |")
    out.append("")
    out.append("| OWASP IoT 2018 | status |")
    out.append("|---|---|")
    for oid, v in a.owasp.items():
        out.append(f"| {oid} {fw.OWASP[oid]} | {v['status']} |")
    out.append("")
    out.append("## Prioritized findings")
    out.append("")
    out.append("| # | risk | check | title | affected | controls / mistakes / OWASP | plan task |")
    out.append("|---|---|---|---|---|---|---|")
    for n, f in enumerate(a.failing, 1):
        refs = ", ".join([*f.controls, *f.mistakes, *f.owasp])
        sample = ", ".join(f.resources[:3]) + (" ..." if len(f.resources) > 3 else "")
        out.append(
            f"| {n} | {f.risk_level} {f.risk_score} | `{f.check_id}` | {_cell(f.title)} | "
            f"{len(f.resources)}: {_cell(sample)} | {refs} | {f.plan_task or ''} |"
        )
    out.append("")
    out.append("## 90-day plan")
    out.append("")
    out.append("| task | phase | days | depends on | owner | closes | evidence of done |")
    out.append("|---|---|---|---|---|---|---|")
    for t in a.plan:
        out.append(
            f"| {_cell(t.title)} (`{t.id}`) | {t.phase} | {t.start_day}-{t.end_day} | "
            f"{', '.join(t.depends_on) if t.id != 'reaudit' else 'all'} | {t.owner} | "
            f"{', '.join(t.findings)} | {_cell(t.evidence_of_done)} |"
        )
    manual = [f for f in a.findings if f.status == "MANUAL"]
    if manual:
        out += ["", "## Needs manual review", ""]
        for f in manual:
            why = next(iter(f.details.values()), "")
            out.append(f"- `{f.check_id}` {f.title}: {_cell(why)}")
    if a.evidence.skipped:
        out += ["", "## Evidence that could not be read", ""]
        for s in a.evidence.skipped[:500]:
            out.append(f"- `{s.path}` ({s.kind}): {_cell(s.reason)}")
    if a.comparison:
        c = a.comparison
        out += ["", "## Compared with the previous assessment", ""]
        out.append(f"Improved: {', '.join(x['check_id'] for x in c['improved']) or 'none'}")
        out.append("")
        out.append(f"Regressed: {', '.join(x['check_id'] for x in c['regressed']) or 'none'}")
    out.append("")
    return "\n".join(out)
