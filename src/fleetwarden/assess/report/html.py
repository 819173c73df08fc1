# ruff: noqa: E501 - the stylesheet keeps one CSS rule per line
"""report.html: self-contained (inline CSS, no scripts, no external resources).

Sections: executive summary, control scorecard, risk matrix, prioritized findings, plan
as a Gantt chart, unreadable evidence, comparison, per-device appendix. The appendix is
paginated (``PAGE_SIZE`` devices per page, each page starts a new printed page) and
capped at ``MAX_APPENDIX_DEVICES``, failing devices first; findings.json carries every
device. Every value from the evidence is HTML-escaped.

The same HTML is rendered to PDF, so the CSS is print-first (A4, WeasyPrint).
"""

from __future__ import annotations

import textwrap
from collections import defaultdict
from html import escape

from fleetwarden.assess import frameworks as fw
from fleetwarden.assess.engine import Assessment
from fleetwarden.assess.report.common import danger_line, headline
from fleetwarden.assess.risk import band

PAGE_SIZE = 250
MAX_APPENDIX_DEVICES = 1000
MAX_RESOURCES_SHOWN = 8

CSS = """
@page { size: A4; margin: 14mm 12mm; @bottom-right { content: counter(page) " / " counter(pages); font-size: 8pt; color: #666; } }
body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; font-size: 9.5pt; color: #1b1f24; margin: 0 auto; max-width: 1100px; }
h1 { font-size: 18pt; margin: 4mm 0 2mm; } h2 { font-size: 13pt; margin: 6mm 0 2mm; border-bottom: 2px solid #1b1f24; padding-bottom: 1mm; }
h3 { font-size: 10.5pt; margin: 3mm 0 1mm; }
.danger { background: #b00020; color: #fff; font-weight: bold; padding: 3mm 4mm; font-size: 12pt; border-radius: 2mm; }
.ok { background: #e7f4ea; padding: 2mm 4mm; border-radius: 2mm; }
table { border-collapse: collapse; width: 100%; margin: 1mm 0 3mm; }
th, td { border: 1px solid #c9ced6; padding: 1mm 1.5mm; vertical-align: top; text-align: left; }
th { background: #eef1f5; font-weight: bold; }
tr { page-break-inside: avoid; }
code { font-family: "DejaVu Sans Mono", monospace; font-size: 8.5pt; }
.badge { display: inline-block; white-space: nowrap; padding: 0.3mm 1.8mm; border-radius: 1.5mm; font-weight: bold; font-size: 8.5pt; color: #fff; }
.pass { background: #2e7d32; } .fail { background: #c62828; } .partial { background: #ef6c00; } .manual { background: #607d8b; }
.critical { background: #7b1fa2; } .high { background: #c62828; } .medium { background: #ef6c00; } .low { background: #f9a825; color: #222; } .note { background: #90a4ae; }
.grid { display: flex; gap: 4mm; } .grid > div { flex: 1; }
.matrix td { text-align: center; height: 12mm; width: 25%; font-size: 12pt; font-weight: bold; }
.m-critical { background: #e1bee7; } .m-high { background: #ffcdd2; } .m-medium { background: #ffe0b2; } .m-low { background: #fff9c4; } .m-note { background: #eceff1; }
.gantt td.bar { padding: 0; position: relative; width: 55%; }
.gantt .track { position: relative; height: 5mm; background: repeating-linear-gradient(90deg, #fff 0, #fff 32.9%, #ddd 33%, #fff 33.4%); }
.gantt .b { position: absolute; top: 0.8mm; height: 3.4mm; border-radius: 1mm; background: #1565c0; }
.gantt .b.urgent { background: #c62828; }
.gantt .scale { display: flex; font-size: 7.5pt; color: #555; } .gantt .scale span { flex: 1; }
.small { font-size: 8pt; color: #444; }
.page { page-break-before: always; }
table.fixed { table-layout: fixed; } td { overflow-wrap: anywhere; }
.gantt td { padding-top: 0.6mm; padding-bottom: 0.6mm; }
.nav a { margin-right: 2mm; }
pre.devices { font-family: "DejaVu Sans Mono", monospace; font-size: 6.5pt; line-height: 1.25; white-space: pre; margin: 0; }
"""


def _e(x: object) -> str:
    return escape(str(x), quote=True)


def _badge(status: str) -> str:
    return f'<span class="badge {_e(status)}">{_e(status)}</span>'


def _summary(a: Assessment) -> str:
    ev = a.evidence
    top = a.failing[:5]
    rows = "".join(
        f"<li>{_badge(f.risk_level)} <b>{_e(f.title)}</b> "
        f"<span class='small'>({len(f.resources)} affected; {_e(', '.join([*f.controls, *f.mistakes]))})</span></li>"
        for f in top
    )
    missing = sorted(
        {"inventory", "certs", "broker", "network", "firmware", "policy", "docs"} - ev.present
    )
    return (
        "<h2 id='summary'>Executive summary</h2>"
        f"<p>{_e(headline(a))}</p>"
        + (f"<h3>Top risks</h3><ol>{rows}</ol>" if rows else "<p>No failing checks.</p>")
        + (
            f"<p class='small'>Evidence not provided (checks needing it are MANUAL): {_e(', '.join(missing))}.</p>"
            if missing
            else ""
        )
    )


def _scorecard(a: Assessment) -> str:
    c = "".join(
        f"<tr><td><b>{k}</b> {_e(fw.CONTROLS[k])}</td><td>{_badge(v['status'])}</td>"
        f"<td class='small'>{_e(', '.join(v['findings'][:6]))}</td></tr>"
        for k, v in a.controls.items()
    )
    m = "".join(
        f"<tr><td><b>{k}</b> {_e(fw.MISTAKES[k])}</td><td>"
        + (
            "<span class='badge fail'>yes</span>"
            if v["present"]
            else "<span class='badge pass'>no</span>"
        )
        + "</td>"
        + f"<td>{len(v['devices'])}</td></tr>"
        for k, v in a.mistakes.items()
    )
    o = "".join(
        f"<tr><td><b>{k}</b> {_e(fw.OWASP[k])}</td><td>{_badge(v['status'])}</td></tr>"
        for k, v in a.owasp.items()
    )
    return (
        "<h2 id='scorecard'>Control scorecard</h2>"
        "<table><tr><th>control</th><th>status</th><th>failing checks</th></tr>" + c + "</table>"
        "<div class='grid'><div><table><tr><th>mistake</th><th>present</th><th>devices</th></tr>"
        + m
        + "</table></div><div><table><tr><th>OWASP IoT Top 10 (2018)</th><th>status</th></tr>"
        + o
        + "</table></div></div>"
    )


def _matrix(a: Assessment) -> str:
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for f in a.failing:
        counts[(band(f.likelihood), band(f.impact))] += 1
    overall = {
        ("low", "low"): "note", ("medium", "low"): "low", ("high", "low"): "medium",
        ("low", "medium"): "low", ("medium", "medium"): "medium", ("high", "medium"): "high",
        ("low", "high"): "medium", ("medium", "high"): "high", ("high", "high"): "critical",
    }  # fmt: skip
    rows = ""
    for imp in ("high", "medium", "low"):
        cells = "".join(
            f"<td class='m-{overall[(lik, imp)]}'>{counts[(lik, imp)] or ''}</td>"
            for lik in ("low", "medium", "high")
        )
        rows += f"<tr><th>impact {imp}</th>{cells}</tr>"
    return (
        "<h2 id='matrix'>Risk matrix</h2><p class='small'>Failing findings by OWASP Risk Rating "
        "likelihood and impact (after fleet modifiers: share affected, risk class, exposure).</p>"
        "<table class='matrix'><tr><th></th><th>likelihood low</th><th>likelihood medium</th>"
        f"<th>likelihood high</th></tr>{rows}</table>"
    )


def _findings(a: Assessment) -> str:
    rows = []
    for n, f in enumerate(a.failing, 1):
        shown = f.resources[:MAX_RESOURCES_SHOWN]
        more = len(f.resources) - len(shown)
        res = ", ".join(_e(r) for r in shown) + (f" … and {more} more" if more > 0 else "")
        refs = " ".join(
            [*f.controls, *f.mistakes, *f.owasp]
            + [f"ETSI {x}" for x in f.etsi[:3]]
            + [f"CRA {x}" for x in f.cra[:3]]
        )
        rows.append(
            f"<tr><td>{n}</td><td>{_badge(f.risk_level)}<br>{f.risk_score}</td>"
            f"<td><b>{_e(f.title)}</b><br><code>{_e(f.check_id)}</code>"
            f"<div class='small'>{_e(f.rationale)}</div></td>"
            f"<td>{len(f.resources)}<div class='small'>{res}</div></td>"
            f"<td class='small'>{_e(refs)}</td>"
            f"<td class='small'>{_e(f.remediation)}<br><i>task: {_e(f.plan_task or '')}</i></td></tr>"
        )
    return (
        "<h2 id='findings'>Prioritized findings</h2>"
        "<table class='fixed'><colgroup><col style='width:5%'><col style='width:11%'>"
        "<col style='width:30%'><col style='width:14%'><col style='width:15%'><col style='width:25%'>"
        "</colgroup><tr><th>#</th><th>risk</th><th>finding</th><th>affected</th><th>maps to</th>"
        "<th>remediation</th></tr>" + "".join(rows) + "</table>"
    )


def _gantt(a: Assessment) -> str:
    bars = []
    details = []
    for t in a.plan:
        left = t.start_day / 90 * 100
        width = max(1.5, (t.end_day - t.start_day) / 90 * 100)
        cls = "b urgent" if t.urgent else "b"
        bars.append(
            f"<tr><td>{_e(t.title)}</td><td class='small'>{t.start_day}-{t.end_day}</td>"
            f"<td class='bar'><div class='track'><div class='{cls}' "
            f"style='left:{left:.1f}%;width:{width:.1f}%'></div></div></td></tr>"
        )
        deps = "all tasks" if t.id == "reaudit" else ", ".join(t.depends_on) or "-"
        details.append(
            f"<tr><td><b>{_e(t.title)}</b><br><code>{_e(t.id)}</code></td>"
            f"<td class='small'>{t.phase}<br>day {t.start_day}-{t.end_day}<br>effort {t.effort}</td>"
            f"<td class='small'>{_e(deps)}</td><td class='small'>{_e(t.owner)}</td>"
            f"<td class='small'>{_e(', '.join(t.findings) or 'verification of the plan')}</td>"
            f"<td class='small'>{_e(t.evidence_of_done)}</td></tr>"
        )
    return (
        "<h2 id='plan'>90-day remediation plan</h2><p class='small'>Red bars close critical "
        "or compound (M1-M4) findings and start first; a task starts after those it depends "
        "on (per-device PKI before mutual TLS before rotation).</p>"
        "<table class='gantt'><colgroup><col style='width:38%'><col style='width:7%'><col></colgroup>"
        "<tr><th>task</th><th>days</th><th><div class='scale'>"
        "<span>0-30 contain</span><span>31-60 harden</span><span>61-90 sustain</span></div></th></tr>"
        + "".join(bars)
        + "</table><h3>Tasks</h3><table class='fixed'><colgroup><col style='width:22%'>"
        "<col style='width:10%'><col style='width:13%'><col style='width:11%'>"
        "<col style='width:22%'><col style='width:22%'></colgroup><tr><th>task</th><th>when</th>"
        "<th>depends on</th><th>owner</th><th>closes findings</th><th>evidence of done</th></tr>"
        + "".join(details)
        + "</table>"
    )


def _evidence(a: Assessment) -> str:
    ev = a.evidence
    parts = []
    if ev.skipped:
        items = "".join(
            f"<tr><td><code>{_e(s.path)}</code></td><td>{_e(s.kind)}</td><td>{_e(s.reason)}</td></tr>"
            for s in ev.skipped[:500]
        )
        parts.append(
            "<h2 id='unreadable'>Evidence that could not be read</h2><p class='small'>Checks "
            "needing these files report MANUAL.</p><table><tr><th>file</th><th>kind</th>"
            f"<th>reason</th></tr>{items}</table>"
        )
    manual = [f for f in a.findings if f.status == "MANUAL"]
    if manual:
        items = "".join(
            f"<tr><td><code>{_e(f.check_id)}</code></td><td>{_e(f.title)}</td>"
            f"<td class='small'>{_e(next(iter(f.details.values()), ''))}</td></tr>"
            for f in manual
        )
        parts.append(
            "<h2 id='manual'>Needs manual review</h2><table><tr><th>check</th><th>title</th>"
            f"<th>why</th></tr>{items}</table>"
        )
    if a.suppression_notes or any(f.suppressed for f in a.findings):
        sup = "".join(
            f"<li><code>{_e(f.check_id)}</code>: {len(f.suppressed)} suppressed</li>"
            for f in a.findings
            if f.suppressed
        ) + "".join(f"<li>{_e(n)}</li>" for n in a.suppression_notes)
        parts.append(f"<h2>Suppressions</h2><ul>{sup}</ul>")
    if a.comparison:
        c = a.comparison
        imp = "".join(f"<li>{_e(x['check_id'])}: {_e(x['title'])}</li>" for x in c["improved"])
        reg = "".join(f"<li>{_e(x['check_id'])}: {_e(x['title'])}</li>" for x in c["regressed"])
        parts.append(
            "<h2 id='compare'>Compared with the previous assessment</h2>"
            f"<h3>Improved</h3><ul>{imp or '<li>none</li>'}</ul>"
            f"<h3>Regressed</h3><ul>{reg or '<li>none</li>'}</ul>"
        )
    return "".join(parts)


def _appendix(a: Assessment) -> str:
    ev = a.evidence
    failing: dict[str, list[str]] = defaultdict(list)
    n_failing = len({r for f in a.failing if f.scope == "device" for r in f.resources})
    for f in a.failing:
        if f.scope != "device":
            continue
        for r in f.resources:
            if r in ev.devices and (len(failing) < MAX_APPENDIX_DEVICES or r in failing):
                failing[r].append(f.check_id)
    order = list(failing)
    if len(order) < MAX_APPENDIX_DEVICES:
        for d in ev.devices:
            if d not in failing:
                order.append(d)
                if len(order) >= MAX_APPENDIX_DEVICES:
                    break
    pages = [order[i : i + PAGE_SIZE] for i in range(0, len(order), PAGE_SIZE)]
    nav = "".join(f"<a href='#dev-page-{i + 1}'>{i + 1}</a>" for i in range(len(pages)))
    out = [
        "<h2 class='page' id='appendix'>Per-device appendix</h2>",
        f"<p class='small'>{len(ev.devices)} devices; {n_failing} with failing checks. "
        f"Showing {len(order)} (failing first) in pages of {PAGE_SIZE}; findings.json lists "
        f"every device.</p><p class='nav small'>Pages: {nav}</p>",
    ]
    # Each page is one preformatted block, not a table: WeasyPrint lays out a 250-row
    # table in seconds, a <pre> of the same rows in milliseconds (report rendering budget).
    widths = (max([len(d) for d in order] + [6]), 10, 16, 18, 7)
    head = "  ".join(
        h.ljust(w)
        for h, w in zip(
            ("device", "model", "risk class", "key storage", "APN"), widths, strict=True
        )
    )
    for i, page in enumerate(pages):
        lines = [head + "  status  failing checks", "-" * (sum(widths) + 34)]
        for did in page:
            dev = ev.devices[did]
            fails = failing.get(did, [])
            risk = dev.risk_class + (f"/{dev.sector}" if dev.sector else "")
            cells = (did, dev.model or "", risk, dev.key_storage, dev.apn or "")
            row = "  ".join(str(c)[:w].ljust(w) for c, w in zip(cells, widths, strict=True))
            status = "FAIL  " if fails else "pass  "
            prefix = f"{row}  {status}  "
            # wrap the failing checks under their column, not back at the margin
            wrapped = textwrap.wrap(", ".join(fails), width=max(30, 126 - len(prefix))) or [""]
            lines.append(prefix + wrapped[0])
            lines.extend(" " * len(prefix) + w for w in wrapped[1:])
        out.append(
            f"<div class='{'page' if i else ''}' id='dev-page-{i + 1}'><h3>Devices, page {i + 1} of {len(pages)}</h3>"
            f"<pre class='devices'>{_e(chr(10).join(lines))}</pre></div>"
        )
    return "".join(out)


def render(a: Assessment) -> str:
    first = (
        f"<div class='danger'>{_e(danger_line(a))}</div>"
        if a.danger
        else "<div class='ok'>No two of the four critical mistakes (M1-M4) are present.</div>"
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>Fleet security assessment</title><style>{CSS}</style></head><body>"
        f"{first}<h1>Fleet security assessment</h1>"
        f"<p class='small'>Generated {_e(a.evidence.now.isoformat(timespec='seconds'))} by "
        f"fleetwarden from <code>{_e(a.evidence.root)}</code>. Controls C1-C10, mistakes M1-M4, "
        "OWASP IoT Top 10 (2018), ETSI EN 303 645, CRA Annex I, NISTIR 8259A.</p>"
        + _summary(a)
        + _scorecard(a)
        + _matrix(a)
        + _findings(a)
        + _gantt(a)
        + _evidence(a)
        + _appendix(a)
        + "</body></html>"
    )
