"""Top-level commands (init, up, version) and the command groups."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from fleetwarden import __version__
from fleetwarden._internal.files import atomic_write, ensure_private_dir
from fleetwarden.cli import (
    agent,
    alerts,
    assess,
    auditlog,
    detect,
    device,
    firmware,
    group,
    identity,
    token,
)
from fleetwarden.cli._common import State, cli_actor, console, print_json, require_init, settings
from fleetwarden.errors import Error
from fleetwarden.registry import Registry
from fleetwarden.registry.schemas import Role, TokenCreate
from fleetwarden.settings import Settings

app = typer.Typer(
    name="fleetwarden",
    help="IoT fleet security: run the ten minimum controls, audit any fleet against them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(device.app, name="device")
app.add_typer(group.app, name="group")
app.add_typer(token.app, name="token")
app.add_typer(auditlog.app, name="log")
app.add_typer(alerts.app, name="alerts")
app.add_typer(detect.app, name="detect")
app.add_typer(firmware.app, name="firmware")
app.add_typer(identity.ca_app, name="ca")
identity.add_device_commands(device.app)
app.add_typer(agent.app, name="agent")
app.command(name="assess")(assess.command)


@app.callback()
def _root(
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            envvar="FLEETWARDEN_DATA_DIR",
            help="Data directory (database, keys, generated configs). Default ./fleetwarden-data.",
            show_default=False,
        ),
    ] = None,
) -> None:
    State.data_dir = data_dir


DEFAULT_TOML = """\
# fleetwarden settings. Environment variables FLEETWARDEN_<NAME> override these.
# database_url = "postgresql://user@127.0.0.1:5432/fleet"   # default: SQLite in this dir
# api_host = "127.0.0.1"
# api_port = 8443
# max_request_bytes = 1048576
# log_level = "info"
"""


@app.command()
def init(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    no_ca: Annotated[
        bool,
        typer.Option(
            "--no-ca",
            help="Do not create the fleet CA (e.g. to configure a PKCS#11 token first; "
            "then run `fleetwarden ca init`).",
        ),
    ] = False,
) -> None:
    """Create the data directory, the database, a first admin API token and the fleet CA."""
    initialise(settings(), json_out=json_out, with_ca=not no_ca)


def initialise(s: Settings, *, json_out: bool, with_ca: bool) -> Settings:
    """``fleetwarden init`` (also run by ``up`` on a data directory never initialised):
    data directory, settings file, database, the first admin token (printed once) and,
    unless told not to, the fleet CA when none exists."""
    from fleetwarden.cli.identity import create_ca, print_ca_created
    from fleetwarden.identity.ca import CaPaths

    ensure_private_dir(s.data_dir)
    fresh = not s.config_path.exists()
    if fresh:
        atomic_write(s.config_path, DEFAULT_TOML.encode(), mode=0o600)
        s = settings()
    reg = Registry.open(s.effective_database_url)
    try:
        created = None
        if not reg.list_tokens():
            created = reg.create_token(
                TokenCreate(name="initial-admin", role=Role.ADMIN), cli_actor()
            )
    finally:
        reg.close()
    want_ca = with_ca and not CaPaths.of(s.data_dir).exists()
    if not json_out:
        console.print(f"data directory: {s.data_dir.resolve()}")
        if not fresh:
            console.print("already initialised; schema is up to date")
        if created is not None:
            console.print("admin API token (shown once, store it now):")
            typer.echo(created.token)
    ca_info: dict[str, str] | None = None
    ca_error: Error | None = None
    if want_ca:
        try:
            ca_info = create_ca(s)
        except Error as exc:  # the admin token above must not be lost with it
            ca_error = exc
    if json_out:
        print_json(
            {
                "data_dir": str(s.data_dir),
                "initialised": fresh,
                "admin_token": created.token if created else None,
                "ca": ca_info,
                **({"ca_error": str(ca_error)} if ca_error else {}),
            }
        )
    elif ca_info is not None:
        print_ca_created(s, ca_info)
    if ca_error is not None:
        if not json_out:
            console.print(
                f"the fleet CA was not created: {ca_error}\n"
                "fix the key backend settings, then run `fleetwarden ca init`"
            )
        raise typer.Exit(ca_error.exit_code)
    return s


@app.command()
def up(
    host: Annotated[str | None, typer.Option(help="API listen address.")] = None,
    port: Annotated[int | None, typer.Option(help="API listen port.")] = None,
) -> None:
    """Run the control plane (API + EST over TLS, CRL, broker, TUF/DDI, audit log,
    detection); on a data directory never initialised, run `init` first."""
    from fleetwarden.service import Context, run, serve

    overrides: dict[str, object] = {}
    if host is not None:
        overrides["api_host"] = host
    if port is not None:
        overrides["api_port"] = port
    s = settings(**overrides)
    if not s.config_path.exists():
        # A data directory never initialised: do what `fleetwarden init` does (admin token
        # printed once, fleet CA), so one command brings every control up.
        initialise(s, json_out=False, with_ca=True)
        s = settings(**overrides)
    require_init(s)
    logging.basicConfig(
        level=s.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    reg = Registry.open(s.effective_database_url)

    def ready(ctx: Context) -> None:
        console.print(f"fleetwarden {__version__} is up (data: {s.data_dir.resolve()})")
        width = max((len(label) for label in ctx.urls), default=0)
        for label, url in ctx.urls.items():
            console.print(f"  {label:<{width}}  {url}")
        console.print("press Ctrl-C to stop")

    try:
        run(serve(s, reg, on_ready=ready))
    except KeyboardInterrupt:
        console.print("stopped")
    finally:
        reg.close()


@app.command()
def version(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Print the version."""
    if json_out:
        print_json({"name": "fleetwarden", "version": __version__})
    else:
        typer.echo(f"fleetwarden {__version__}")
