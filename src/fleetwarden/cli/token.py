"""``fleetwarden token``: API tokens (stored hashed, shown once)."""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError as PydanticValidationError
from rich.table import Table

from fleetwarden.cli._common import JsonFlag, cli_actor, console, print_json, registry
from fleetwarden.errors import ValidationError
from fleetwarden.registry.schemas import TokenCreate, explain

app = typer.Typer(help="Manage API tokens.", no_args_is_help=True)


@app.command()
def create(
    name: Annotated[str, typer.Option(help="What the token is for.")],
    role: Annotated[str, typer.Option(help="admin, operator or auditor")] = "operator",
    expires_days: Annotated[int | None, typer.Option(help="Expire after N days.")] = None,
    json_out: bool = JsonFlag,
) -> None:
    """Create a token and print it once (alone on stdout, for scripts)."""
    try:
        data = TokenCreate.model_validate(
            {"name": name, "role": role, "expires_days": expires_days}
        )
    except PydanticValidationError as exc:
        raise ValidationError(explain(exc.errors()[0])) from exc
    with registry() as reg:
        out = reg.create_token(data, cli_actor())
    if json_out:
        print_json(out)
    else:
        typer.echo(out.token)


@app.command("list")
def list_(json_out: bool = JsonFlag) -> None:
    """List tokens (never their secrets)."""
    with registry() as reg:
        tokens = reg.list_tokens()
    if json_out:
        print_json(tokens)
        return
    table = Table("id", "name", "role", "created", "expires", "last used", "revoked")
    for t in tokens:
        table.add_row(
            t.id,
            t.name,
            t.role.value,
            t.created_at.isoformat(timespec="seconds"),
            t.expires_at.isoformat(timespec="seconds") if t.expires_at else "",
            t.last_used_at.isoformat(timespec="seconds") if t.last_used_at else "",
            t.revoked_at.isoformat(timespec="seconds") if t.revoked_at else "",
        )
    console.print(table)


@app.command()
def revoke(token_id: str) -> None:
    """Revoke a token; calls with it fail from now on."""
    with registry() as reg:
        reg.revoke_token(token_id, cli_actor())
    console.print(f"revoked token {token_id}")
