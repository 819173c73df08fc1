"""``fleetwarden agent enroll|renew|status``: the device side of C1/C5 (see
``fleetwarden.agent``)."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Annotated

import typer

from fleetwarden.agent import Agent, AgentConfig
from fleetwarden.agent.core import DEFAULT_PIN_ENV, PendingApproval
from fleetwarden.cli._common import JsonFlag, console, print_json
from fleetwarden.identity.tlskey import DEFAULT_ENGINE, DEFAULT_MODULE

app = typer.Typer(help="Device agent: enrol over EST, renew with fresh keys.", no_args_is_help=True)

StateDir = Annotated[Path, typer.Option("--state-dir", help="Agent state (keys, cert), 0700.")]


@app.command("enroll")
def enroll(
    state_dir: StateDir,
    server: Annotated[str, typer.Option(help="EST server, https://host:port")],
    device_id: Annotated[str, typer.Option(help="This device's id.")],
    ca_file: Annotated[Path, typer.Option(help="Fleet root CA (PEM) to trust.")],
    token: Annotated[
        str | None, typer.Option(envvar="FLEETWARDEN_ENROLL_TOKEN", help="One-time token.")
    ] = None,
    factory_cert: Annotated[Path | None, typer.Option(help="Factory certificate (PEM).")] = None,
    factory_key: Annotated[Path | None, typer.Option(help="Factory key (PEM).")] = None,
    label: Annotated[str | None, typer.Option(help="EST label (profile).")] = None,
    key_backend: Annotated[
        str, typer.Option(help="Where the device key lives: file (key.pem) or pkcs11 (token).")
    ] = "file",
    pkcs11_module: Annotated[
        Path, typer.Option(help="PKCS#11 module of the token.")
    ] = DEFAULT_MODULE,
    pkcs11_token_label: Annotated[
        str | None, typer.Option(help="Token label (pkcs11 backend).")
    ] = None,
    pkcs11_pin_file: Annotated[
        Path | None,
        typer.Option(help=f"File holding the token PIN (else the env var {DEFAULT_PIN_ENV})."),
    ] = None,
    pkcs11_engine: Annotated[
        str, typer.Option(help="OpenSSL engine id or .so path used for TLS with the token key.")
    ] = DEFAULT_ENGINE,
    json_out: bool = JsonFlag,
) -> None:
    """First enrolment with a token (HTTP Basic) or a factory certificate (mTLS)."""
    agent = Agent(
        state_dir,
        AgentConfig(
            server=server,
            device_id=device_id,
            ca_file=str(ca_file.resolve()),
            factory_cert=str(factory_cert.resolve()) if factory_cert else None,
            factory_key=str(factory_key.resolve()) if factory_key else None,
            label=label,
            key_backend=key_backend,
            pkcs11_module=str(pkcs11_module),
            pkcs11_token_label=pkcs11_token_label,
            pkcs11_pin_file=str(pkcs11_pin_file.resolve()) if pkcs11_pin_file else None,
            pkcs11_engine=pkcs11_engine,
        ),
    )
    try:
        agent.enroll(token)
    except PendingApproval as exc:
        console.print(str(exc))
        raise typer.Exit(exc.exit_code) from exc
    _report(agent, json_out)


@app.command("renew")
def renew(
    state_dir: StateDir,
    force: Annotated[bool, typer.Option(help="Renew now even if not due.")] = False,
    loop: Annotated[bool, typer.Option(help="Keep running; renew whenever due.")] = False,
    json_out: bool = JsonFlag,
) -> None:
    """Renew with a fresh key when due (about 2/3 of the lifetime, with jitter)."""
    agent = Agent(state_dir)
    while True:
        cert = agent.renew(force=force)
        if not loop:
            if cert is None:
                console.print(f"not due yet (renew at {agent.schedule.get('renew_at')})")
            else:
                _report(agent, json_out)
            return
        force = False
        time.sleep(min(3600.0, 60 + random.random() * 60))  # noqa: S311 (jitter, not crypto)


@app.command("status")
def status(state_dir: StateDir, json_out: bool = JsonFlag) -> None:
    """The agent's certificate, its expiry and the renewal schedule."""
    _report(Agent(state_dir), json_out)


def _report(agent: Agent, json_out: bool) -> None:
    st = agent.status()
    if json_out:
        print_json(st)
        return
    for k, v in st.items():
        console.print(f"{k:<18} {v}")
