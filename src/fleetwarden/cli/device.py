"""``fleetwarden device``: the fleet registry's devices."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError as PydanticValidationError
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn
from rich.table import Table

from fleetwarden.cli._common import JsonFlag, cli_actor, console, print_json, registry
from fleetwarden.errors import ValidationError
from fleetwarden.registry.importer import detect_format
from fleetwarden.registry.schemas import DeviceCreate, explain

app = typer.Typer(help="Manage devices in the fleet registry.", no_args_is_help=True)


def _validation(exc: PydanticValidationError) -> ValidationError:
    return ValidationError(explain(exc.errors()[0]))


@app.command("add")
def add(
    device_id: Annotated[str, typer.Argument(help="Device id (letters, digits, . _ : @ -).")],
    model: Annotated[str | None, typer.Option()] = None,
    hardware_revision: Annotated[str | None, typer.Option()] = None,
    risk_class: Annotated[str | None, typer.Option(help="low, medium or high")] = None,
    sector: Annotated[str | None, typer.Option(help="e.g. health, energy, payments")] = None,
    firmware_version: Annotated[str | None, typer.Option()] = None,
    key_storage: Annotated[
        str | None, typer.Option(help="secure_element, tpm, mcu_secure_storage, file, unknown")
    ] = None,
    apn: Annotated[str | None, typer.Option(help="private or public")] = None,
    ip: Annotated[str | None, typer.Option()] = None,
    ip_fixed: Annotated[bool, typer.Option("--ip-fixed/--no-ip-fixed")] = False,
    cidr: Annotated[list[str] | None, typer.Option("--cidr", help="Allowed source CIDR.")] = None,
    vlan: Annotated[int | None, typer.Option()] = None,
    group: Annotated[list[str] | None, typer.Option("--group", help="Group name.")] = None,
    json_out: bool = JsonFlag,
) -> None:
    """Add one device."""
    raw = {
        "device_id": device_id,
        "model": model,
        "hardware_revision": hardware_revision,
        "risk_class": risk_class,
        "sector": sector,
        "firmware_version": firmware_version,
        "key_storage": key_storage,
        "apn": apn,
        "ip": ip,
        "ip_fixed": ip_fixed,
        "allowed_cidrs": cidr or None,
        "vlan": vlan,
        "groups": group or None,
    }
    try:
        data = DeviceCreate.model_validate({k: v for k, v in raw.items() if v is not None})
    except PydanticValidationError as exc:
        raise _validation(exc) from exc
    with registry() as reg:
        out = reg.add_device(data, cli_actor())
    if json_out:
        print_json(out)
    else:
        console.print(f"added device {out.device_id}")


@app.command("list")
def list_(
    group: Annotated[str | None, typer.Option(help="Only devices of this group.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000)] = 100,
    after: Annotated[str | None, typer.Option(help="Start after this device id.")] = None,
    json_out: bool = JsonFlag,
) -> None:
    """List devices, ordered by id."""
    with registry() as reg:
        devices = reg.list_devices(group=group, after=after, limit=limit)
    if json_out:
        print_json(devices)
        return
    table = Table("device", "model", "risk", "key storage", "apn", "ip", "groups", "status")
    for d in devices:
        table.add_row(
            d.device_id,
            d.model or "",
            d.risk_class.value + (f"/{d.sector}" if d.sector else ""),
            d.key_storage.value,
            d.apn.value if d.apn else "",
            (d.ip or "") + (" (fixed)" if d.ip_fixed else ""),
            ", ".join(d.groups),
            d.status,
        )
    console.print(table)


@app.command()
def show(device_id: str, json_out: bool = JsonFlag) -> None:
    """Show one device."""
    with registry() as reg:
        d = reg.get_device(device_id)
    if json_out:
        print_json(d)
        return
    for key, value in d.model_dump(mode="json").items():
        console.print(f"{key:<18} {value}")


@app.command()
def remove(
    device_id: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Remove a device from the registry."""
    if not yes:
        typer.confirm(f"remove device {device_id}?", abort=True)
    with registry() as reg:
        reg.remove_device(device_id, cli_actor())
    console.print(f"removed device {device_id}")


@app.command("import")
def import_(
    path: Annotated[Path, typer.Argument(help="CSV or JSON Lines file.")],
    fmt: Annotated[str | None, typer.Option("--format", help="csv or jsonl")] = None,
    json_out: bool = JsonFlag,
) -> None:
    """Import devices from CSV or JSON Lines: all rows or none."""
    fmt = fmt or detect_format(path.name)
    try:
        size = path.stat().st_size
        fh = path.open("rb")
    except OSError as exc:
        raise ValidationError(f"cannot read {path}: {exc.strerror}") from exc
    with (
        registry() as reg,
        fh,
        Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=json_out,
            transient=True,
        ) as bar,
    ):
        task = bar.add_task(f"importing {path.name}", total=size)
        result = reg.import_devices(
            fh,
            fmt=fmt,
            actor=cli_actor(),
            progress=lambda n: bar.advance(task, n),
            source=str(path),
            size_hint=size,
        )
    if json_out:
        print_json(result)
    else:
        console.print(
            f"imported {result.devices} devices from {path} ({result.groups_created} new groups)"
        )
