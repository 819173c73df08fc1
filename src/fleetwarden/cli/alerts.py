"""``fleetwarden alerts``: list, show, acknowledge, resolve, suppress alerts (C9)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from fleetwarden.cli._common import (
    JsonFlag,
    cli_actor,
    console,
    print_json,
    registry,
    settings,
)
from fleetwarden.detect.alerts import AlertStatus, AlertStore, SuppressBody, Verification
from fleetwarden.detect.rules import AlertSeverity

if TYPE_CHECKING:
    from fleetwarden.identity.service import IdentityService
    from fleetwarden.registry import Registry
    from fleetwarden.settings import Settings

app = typer.Typer(help="Detection alerts (control C9).", no_args_is_help=True)


@app.command("list")
def list_(
    status: Annotated[AlertStatus | None, typer.Option(help="Only this status.")] = None,
    device: Annotated[str | None, typer.Option(help="Only this device.")] = None,
    severity: Annotated[AlertSeverity | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    json_out: bool = JsonFlag,
) -> None:
    """List alerts, newest activity first."""
    with registry() as reg:
        alerts = AlertStore(reg).list_alerts(
            status=status, device_id=device, severity=severity, limit=limit
        )
    if json_out:
        print_json(alerts)
        return
    table = Table("id", "severity", "status", "device", "count", "last seen", "title")
    for a in alerts:
        table.add_row(
            a.id[:12],
            a.severity.value,
            a.status.value,
            a.device_id or "",
            str(a.count),
            a.last_seen.strftime("%Y-%m-%d %H:%M"),
            a.title,
        )
    console.print(table)


def _full_id(store: AlertStore, prefix: str) -> str:
    if len(prefix) >= 32:
        return prefix
    matches = [a.id for a in store.list_alerts(limit=1000) if a.id.startswith(prefix)]
    return matches[0] if len(matches) == 1 else prefix


@app.command()
def show(alert_id: str, json_out: bool = JsonFlag) -> None:
    """Show one alert with its evidence."""
    with registry() as reg:
        store = AlertStore(reg)
        a = store.get(_full_id(store, alert_id))
    if json_out:
        print_json(a)
        return
    for key, value in a.model_dump(mode="json").items():
        console.print(f"{key:<16} {value}")


@app.command()
def ack(alert_id: str) -> None:
    """Acknowledge an open alert."""
    with registry() as reg:
        store = AlertStore(reg)
        a = store.acknowledge(_full_id(store, alert_id), cli_actor())
    console.print(f"alert {a.id} acknowledged")


@app.command()
def resolve(
    alert_id: str,
    verification: Annotated[
        Verification, typer.Option(help="What the alert turned out to be.")
    ] = Verification.UNVERIFIED,
    note: Annotated[str | None, typer.Option(help="Free text kept with the alert.")] = None,
) -> None:
    """Resolve an alert, recording whether it was a true positive, benign or false."""
    with registry() as reg:
        store = AlertStore(reg)
        a = store.resolve(
            _full_id(store, alert_id), cli_actor(), verification=verification, note=note
        )
    console.print(f"alert {a.id} resolved ({a.verification.value})")


@app.command()
def suppress(
    alert_id: Annotated[
        str | None, typer.Argument(help="Suppress this alert's device and key.")
    ] = None,
    device: Annotated[str | None, typer.Option(help="Device to suppress.")] = None,
    key: Annotated[
        str | None, typer.Option(help="Detector key prefix, e.g. rule:auth-failures.")
    ] = None,
    minutes: Annotated[int, typer.Option("--minutes", min=1, help="Expiry.")] = 60,
    reason: Annotated[str, typer.Option(help="Why (kept with the suppression).")] = "operator",
    json_out: bool = JsonFlag,
) -> None:
    """Suppress alerts for a device and/or key until the suppression expires."""
    with registry() as reg:
        store = AlertStore(reg)
        if alert_id is not None:
            a = store.get(_full_id(store, alert_id))
            device = device or a.device_id
            key = key or a.key
        body = SuppressBody(device_id=device, key_prefix=key, minutes=minutes, reason=reason)
        sup = store.suppress(body, cli_actor())
    if json_out:
        print_json(sup)
    else:
        console.print(
            f"suppressed device={sup.device_id} key={sup.key_prefix} until "
            f"{sup.expires_at:%Y-%m-%d %H:%M} UTC"
        )


@app.command()
def approve(alert_id: str) -> None:
    """Run (approve) the mitigation the alert's rule declared."""
    from fleetwarden.detect.mitigation import mitigations
    from fleetwarden.detect.service import run_mitigation

    s = settings()
    with registry() as reg:
        store = AlertStore(reg)
        # Revocation works from here (the fleet CA is on disk; a running `up` relays the
        # event to the broker); dropping a session needs the broker, so it does not.
        state = SimpleNamespace(identity=_identity(s, reg))
        a = run_mitigation(
            store,
            mitigations(reg, s.detect.quarantine_group, state=state),
            _full_id(store, alert_id),
            cli_actor(),
        )
    console.print(f"mitigation {a.mitigation.get('action')}: {a.mitigation.get('state')}")
    if a.mitigation.get("detail"):
        console.print(str(a.mitigation["detail"]))
    if a.mitigation.get("state") == "not_wired":
        raise typer.Exit(69)
    if a.mitigation.get("state") == "failed":
        raise typer.Exit(1)


def _identity(s: Settings, reg: Registry) -> IdentityService | None:
    from fleetwarden.identity.ca import CaPaths, FleetCA
    from fleetwarden.identity.service import IdentityService
    from fleetwarden.identity.tls import manufacturer_cas

    if not CaPaths.of(s.data_dir).exists():
        return None
    ca = FleetCA.load(s.data_dir, s.identity)
    return IdentityService(reg, ca, manufacturer_cas=manufacturer_cas(s.identity))
