"""``fleetwarden group``: device groups (segmentation, policy and rollout units)."""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError as PydanticValidationError
from rich.table import Table

from fleetwarden.cli._common import JsonFlag, cli_actor, console, print_json, registry
from fleetwarden.errors import ValidationError
from fleetwarden.registry.schemas import GroupCreate, explain

app = typer.Typer(help="Manage device groups.", no_args_is_help=True)


@app.command()
def create(
    name: str,
    description: Annotated[str | None, typer.Option()] = None,
    cidr: Annotated[list[str] | None, typer.Option("--cidr", help="Allowed source CIDR.")] = None,
    vlan: Annotated[int | None, typer.Option()] = None,
    json_out: bool = JsonFlag,
) -> None:
    """Create a group."""
    try:
        data = GroupCreate(name=name, description=description, allowed_cidrs=cidr or [], vlan=vlan)
    except PydanticValidationError as exc:
        raise ValidationError(explain(exc.errors()[0])) from exc
    with registry() as reg:
        out = reg.create_group(data, cli_actor())
    if json_out:
        print_json(out)
    else:
        console.print(f"created group {out.name}")


@app.command("list")
def list_(json_out: bool = JsonFlag) -> None:
    """List groups with their device counts."""
    with registry() as reg:
        groups = reg.list_groups()
    if json_out:
        print_json(groups)
        return
    table = Table("group", "devices", "allowed CIDRs", "vlan", "description")
    for g in groups:
        table.add_row(
            g.name,
            str(g.device_count),
            ", ".join(g.allowed_cidrs),
            str(g.vlan or ""),
            g.description or "",
        )
    console.print(table)


@app.command()
def show(name: str, json_out: bool = JsonFlag) -> None:
    """Show one group."""
    with registry() as reg:
        g = reg.get_group(name)
    if json_out:
        print_json(g)
        return
    for key, value in g.model_dump(mode="json").items():
        console.print(f"{key:<14} {value}")


@app.command()
def remove(
    name: str, yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False
) -> None:
    """Remove a group (its devices stay, without this membership)."""
    if not yes:
        typer.confirm(f"remove group {name}?", abort=True)
    with registry() as reg:
        reg.remove_group(name, cli_actor())
    console.print(f"removed group {name}")


@app.command("add-device")
def add_device(name: str, device_id: str) -> None:
    """Put a device into a group."""
    with registry() as reg:
        reg.set_membership(name, device_id, True, cli_actor())
    console.print(f"device {device_id} is in group {name}")


@app.command("remove-device")
def remove_device(name: str, device_id: str) -> None:
    """Take a device out of a group."""
    with registry() as reg:
        reg.set_membership(name, device_id, False, cli_actor())
    console.print(f"device {device_id} is no longer in group {name}")
