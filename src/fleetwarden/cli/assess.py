"""``fleetwarden assess``: audit a fleet from an evidence bundle and/or the registry."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from fleetwarden.cli._common import console, open_registry, print_json


def command(
    evidence_dir: Annotated[
        Path | None, typer.Argument(help="Evidence bundle directory (see docs/assess.md).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Directory for the six report files.")] = Path(
        "assessment"
    ),
    live: Annotated[bool, typer.Option("--live", help="Also read the running registry.")] = False,
    compare: Annotated[
        Path | None, typer.Option("--compare", help="A previous findings.json to compare with.")
    ] = None,
    no_pdf: Annotated[bool, typer.Option("--no-pdf", help="Skip report.pdf.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    probe_tls: Annotated[
        list[str] | None,
        typer.Option(
            "--probe-tls",
            metavar="HOST:PORT",
            help="Probe this TLS endpoint live (repeatable; off by default).",
        ),
    ] = None,
    probe_policy: Annotated[
        bool,
        typer.Option(
            "--probe-policy", help="Also probe the bundle's policy.toml [probes] tls_endpoints."
        ),
    ] = False,
) -> None:
    """Assess EVIDENCE_DIR (and/or the registry with --live); write reports to --out."""
    from fleetwarden.assess.engine import assess as run
    from fleetwarden.assess.errors import AssessError
    from fleetwarden.assess.evidence import Evidence, collect
    from fleetwarden.assess.evidence.live import collect_live
    from fleetwarden.assess.report import write_reports
    from fleetwarden.assess.report.compare import compare as do_compare
    from fleetwarden.assess.report.compare import load_previous

    if evidence_dir is None and not live:
        raise AssessError("give an evidence directory, --live, or both")
    if evidence_dir is not None and not evidence_dir.is_dir():
        raise AssessError(f"{evidence_dir} is not a directory")
    previous = load_previous(compare) if compare is not None else None
    t0 = time.monotonic()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=json_out,
    ) as bar:
        task = bar.add_task("reading evidence", total=None)
        if evidence_dir is not None:
            ev = collect(
                evidence_dir,
                lambda name, n: bar.update(task, description=f"reading {name}", completed=n),
            )
        else:
            ev = Evidence(root="registry")
        if live:
            bar.update(task, description="reading the registry")
            reg = open_registry()
            try:
                collect_live(reg, ev)
            finally:
                reg.close()
        endpoints = list(probe_tls or [])
        if probe_policy and ev.policy is not None:
            endpoints += ev.policy.tls_endpoints
        if endpoints:
            from fleetwarden.assess.evidence.probe import collect_probes

            bar.update(task, description=f"probing {len(endpoints)} TLS endpoints")
            collect_probes(ev, endpoints)
        elif probe_policy:
            ev.notes.append("probe: --probe-policy given but policy.toml lists no tls_endpoints")
        checking = bar.add_task("running checks", total=1)
        a = run(ev, lambda i, n: bar.update(checking, completed=i, total=n))
        if previous is not None:
            a.comparison = do_compare(a, previous)
        writing = bar.add_task("writing reports", total=None)
        written = write_reports(
            a,
            out,
            pdf=not no_pdf,
            progress=lambda n: bar.update(writing, description=f"writing {n}"),
        )
    summary = {
        "danger": a.danger,
        "devices": len(ev.devices),
        "failing": len(a.failing),
        "critical": sum(1 for f in a.failing if f.risk_level == "critical"),
        "manual": sum(1 for f in a.findings if f.status == "MANUAL"),
        "unreadable": len(ev.skipped),
        "outputs": [str(p) for p in written],
        "seconds": round(time.monotonic() - t0, 2),
    }
    if json_out:
        print_json(summary)
        return
    if a.danger:
        from fleetwarden.assess.report.common import danger_line

        console.print(f"[bold red]{danger_line(a)}[/]")
    console.print(
        f"{summary['devices']} devices, {summary['failing']} failing checks "
        f"({summary['critical']} critical), {summary['manual']} manual, "
        f"{summary['unreadable']} unreadable files; reports in {out}"
    )
