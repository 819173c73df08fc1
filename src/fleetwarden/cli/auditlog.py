"""``fleetwarden log``: read, prove, verify, checkpoint, export and archive the audit log
(control C7). Nothing here appends entries: they only come from the event bus."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from fleetwarden.auditlog.archive import build_archive, verify_archive, write_archive
from fleetwarden.auditlog.checkpoint import read_notes
from fleetwarden.auditlog.errors import AuditLogError, EntryNotFoundError
from fleetwarden.auditlog.service import AuditLog, open_log
from fleetwarden.auditlog.siem import FORMATS, ExportError, SyslogSender, export
from fleetwarden.auditlog.store import Entry
from fleetwarden.cli._common import (
    JsonFlag,
    cli_actor,
    console,
    print_json,
    registry,
    require_init,
    settings,
)

app = typer.Typer(
    help="The tamper-evident audit log (C7): tail, prove, verify, export.", no_args_is_help=True
)


class VerificationFailedError(AuditLogError):
    """``log verify`` found damage (the report was printed)."""

    exit_code = 65


def _record(operation: str, message: str) -> None:
    """Record an admin action on the log itself (checkpoint, export, archive) through the
    registry outbox: it reaches the audit log over the bus like every other event."""
    from fleetwarden.events import Activity, api_activity

    actor = cli_actor()
    with registry() as reg, reg.session() as s:
        reg.record(
            s,
            api_activity(
                operation=operation, activity=Activity.OTHER, actor=actor.name, message=message
            ),
        )


def _open(*, create_keys: bool = True) -> AuditLog:
    s = settings()
    require_init(s)
    return open_log(s.auditlog, s.data_dir, create_keys=create_keys)


def _summary(e: Entry) -> tuple[str, str, str, str]:
    try:
        rec: dict[str, Any] = e.record()
    except ValueError:
        return str(e.seq), "?", "damaged", ""
    ev = rec.get("event") or {}
    kind = rec.get("kind", "?")
    what = ev.get("class_name", kind) if kind == "event" else "MALFORMED"
    msg = ev.get("message") or rec.get("malformed", {}).get("reason", "")
    return str(e.seq), str(rec.get("logged_at", "")), str(what), str(msg)


def _entry_json(e: Entry) -> dict[str, Any]:
    try:
        record: Any = e.record()
    except ValueError:
        record = None
    return {"seq": e.seq, "uid": e.uid, "leaf_hash": e.leaf_hash.hex(), "record": record}


@app.command()
def tail(
    n: Annotated[int, typer.Option("-n", "--lines", min=1, max=10_000)] = 20,
    json_out: bool = JsonFlag,
) -> None:
    """The newest entries."""
    log = _open()
    try:
        got = log.store.tail(n)
    finally:
        log.close()
    if json_out:
        print_json([_entry_json(e) for e in got])
        return
    table = Table("seq", "logged at (ms)", "class", "message")
    for e in got:
        table.add_row(*_summary(e))
    console.print(table)


@app.command()
def show(
    seq: Annotated[int | None, typer.Argument(help="Sequence number.")] = None,
    uid: Annotated[str | None, typer.Option(help="Event uid instead of seq.")] = None,
    json_out: bool = JsonFlag,
) -> None:
    """One entry, with its leaf hash."""
    log = _open()
    try:
        e = (
            log.store.entry_by_uid(uid)
            if uid
            else (log.store.entry(seq) if seq is not None else None)
        )
    finally:
        log.close()
    if e is None:
        raise EntryNotFoundError(f"no audit log entry {uid or seq}")
    if json_out:
        print_json(_entry_json(e))
        return
    console.print(f"seq {e.seq}  uid {e.uid}  leaf hash {e.leaf_hash.hex()}")
    typer.echo(e.leaf.decode("utf-8", "replace"))


@app.command()
def verify(
    checkpoint: Annotated[
        list[Path] | None,
        typer.Option("--checkpoint", help="Extra checkpoint note or anchor file to check against."),
    ] = None,
    json_out: bool = JsonFlag,
) -> None:
    """Recompute the whole tree; report the first damaged index and the kind of damage."""
    log = _open()
    notes: list[str] = []
    for p in checkpoint or []:
        notes += read_notes(p)
    try:
        total = log.store.size()
        if json_out or not sys.stderr.isatty():
            rep = log.verify(notes)
        else:
            with Progress(
                TextColumn("verifying"), BarColumn(), TextColumn("{task.completed}/{task.total}")
            ) as bar:
                task = bar.add_task("verify", total=total)
                rep = log.verify(notes, progress=lambda n: bar.update(task, completed=n))
    finally:
        log.close()
    if json_out:
        print_json(rep.as_dict())
    elif rep.ok:
        console.print(
            f"OK: {rep.size} entries, root {rep.root.hex()}, "
            f"{rep.checkpoints_checked} checkpoint(s) verified (newest {rep.newest_checkpoint})"
        )
    else:
        first = rep.first
        assert first is not None
        console.print(f"DAMAGED: first bad index {first.index}: {first.kind}: {first.detail}")
        for prob in sorted(rep.problems)[1:20]:
            console.print(f"  also index {prob.index}: {prob.kind}: {prob.detail}")
    if not rep.ok:
        first = rep.first
        assert first is not None
        raise VerificationFailedError(f"audit log damaged at index {first.index} ({first.kind})")


@app.command()
def prove(
    seq: Annotated[int, typer.Argument(help="Entry to prove (inclusion).")],
    size: Annotated[
        int | None, typer.Option(help="Tree size (default: newest checkpoint).")
    ] = None,
    consistency: Annotated[
        bool, typer.Option("--consistency", help="Prove tree SEQ is a prefix of --size instead.")
    ] = False,
    json_out: bool = JsonFlag,
) -> None:
    """An inclusion proof for an entry, or a consistency proof between two sizes."""
    log = _open()
    try:
        out = log.consistency(seq, size) if consistency else log.prove(seq, size)
    finally:
        log.close()
    if json_out:
        print_json(out)
        return
    for k, v in out.items():
        if isinstance(v, list):
            console.print(f"{k}:")
            for h in v:
                console.print(f"  {h}")
        elif k not in ("leaf", "checkpoint"):
            console.print(f"{k}: {v}")
    if out.get("checkpoint"):
        typer.echo(out["checkpoint"])


@app.command()
def checkpoint(
    show_only: Annotated[bool, typer.Option("--show", help="Print the newest; make none.")] = False,
    key: Annotated[bool, typer.Option("--key", help="Print the verifier key(s).")] = False,
    json_out: bool = JsonFlag,
) -> None:
    """Sign a checkpoint of the current log now and publish it to the anchors."""
    log = _open()
    try:
        if key:
            keys = {
                "log": [v.text() for v in log.verifiers()],
                "witness": [v.text() for v in log.witness_verifiers()],
            }
            if json_out:
                print_json(keys)
            else:
                for k in keys["log"] + keys["witness"]:
                    typer.echo(k)
            return
        cp = log.store.latest_checkpoint() if show_only else log.checkpointer.make()
        failures = dict(log.checkpointer.failures)
    finally:
        log.close()
    if cp is None:
        raise EntryNotFoundError("the audit log has no checkpoint (it is empty)")
    if not show_only:
        _record("log checkpoint", f"audit log checkpoint signed at size {cp.size}")
    if json_out:
        print_json(
            {
                "size": cp.size,
                "root_hash": cp.root.hex(),
                "note": cp.note,
                "anchor_failures": failures,
            }
        )
        return
    typer.echo(cp.note, nl=False)
    for name, why in failures.items():
        console.print(f"[yellow]warning:[/] not published to {name}: {why}", markup=True)


@app.command("export")
def export_(
    fmt: Annotated[str, typer.Option("--format", help=f"One of {', '.join(FORMATS)}.")] = "ocsf",
    start: Annotated[int, typer.Option("--from", min=0)] = 0,
    end: Annotated[int | None, typer.Option("--to", help="Stop before this seq.")] = None,
    output: Annotated[Path | None, typer.Option(help="File (default stdout).")] = None,
    syslog: Annotated[
        str | None, typer.Option(help="Send to tcp://, tls:// or udp://host:port.")
    ] = None,
    ca: Annotated[Path | None, typer.Option(help="CA bundle for tls://.")] = None,
) -> None:
    """SIEM export of checkpointed entries (each with seq, leaf hash, covering checkpoint)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    log = _open()
    n = 0
    try:
        if syslog:
            with SyslogSender(syslog, ca_file=ca) as sender:
                for line in export(log.store, "syslog", start=start, end=end):
                    sender.send(line)
                    n += 1
        else:
            out = output.open("w") if output else sys.stdout
            try:
                for line in export(log.store, fmt, start=start, end=end):
                    out.write(line + "\n")
                    n += 1
            finally:
                if output:
                    out.close()
    finally:
        log.close()
    dest = syslog or (str(output) if output else "stdout")
    _record("log export", f"audit log exported: {n} {fmt} record(s) from {start} to {dest}")
    if syslog or output:
        console.print(f"exported {n} record(s)")


@app.command()
def archive(
    start: Annotated[int, typer.Option("--from", min=0)],
    end: Annotated[int, typer.Option("--to", help="Stop before this seq.")],
    output: Annotated[Path, typer.Option(help="Archive file to write.")],
) -> None:
    """Write entries [from, to) with their proofs and checkpoint to a self-verifying file."""
    log = _open()
    try:
        obj = build_archive(
            log.store,
            start,
            end,
            origin=log.origin,
            verifier_keys=[v.text() for v in log.verifiers()],
        )
        write_archive(output, obj)
    finally:
        log.close()
    _record("log archive", f"audit log entries {start}..{end - 1} archived to {output}")
    console.print(f"archived entries {start}..{end - 1} to {output}")


@app.command("verify-archive")
def verify_archive_(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    key: Annotated[
        list[str] | None, typer.Option(help="Verifier key (default: this log's keys).")
    ] = None,
    json_out: bool = JsonFlag,
) -> None:
    """Check an archive on its own against a pinned verifier key."""
    from fleetwarden.auditlog.note import Verifier

    if key:
        verifiers = [Verifier.parse(k) for k in key]
    else:
        log = _open()
        try:
            verifiers = log.verifiers()
        finally:
            log.close()
    rep = verify_archive(path, verifiers)
    if json_out:
        print_json(rep.__dict__)
    else:
        console.print(
            f"OK: entries {rep.start}..{rep.end - 1} of {rep.origin} verified against "
            f"checkpoint {rep.checkpoint_size}"
        )
