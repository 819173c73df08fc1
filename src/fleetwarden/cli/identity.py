"""``fleetwarden ca ...`` and the identity commands of ``fleetwarden device``
(``token``, ``revoke``, ``certs``): the fleet CA and device identities (C1, C5)."""

from __future__ import annotations

import contextlib
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives import hashes

from fleetwarden.cli._common import (
    JsonFlag,
    cli_actor,
    console,
    open_registry,
    print_json,
    require_init,
    settings,
)
from fleetwarden.identity.ca import CaPaths, FleetCA, export_root, init_ca, resign_root_crl
from fleetwarden.identity.service import IdentityService, Issued
from fleetwarden.identity.tls import issue_server_certificate, manufacturer_cas
from fleetwarden.settings import Settings

ca_app = typer.Typer(
    help="The fleet CA: create it, keep the root offline, CRL, approvals.", no_args_is_help=True
)


def _service() -> tuple[IdentityService, object]:
    s = settings()
    reg = open_registry(s)
    ca = FleetCA.load(s.data_dir, s.identity)
    return IdentityService(reg, ca, manufacturer_cas=manufacturer_cas(s.identity)), reg


def create_ca(s: Settings) -> dict[str, str]:
    """Create the fleet CA (``ca init``, and ``init`` / ``up`` on a fresh data dir)."""
    ca = init_ca(s.data_dir, s.identity)
    paths = ca.paths
    return {
        "root": str(paths.root_cert),
        "issuing": str(paths.issuing_cert),
        "chain": str(paths.chain),
        "crl": str(paths.crl),
        "crl_url": ca.crl_url,
        "key_backend": s.identity.key_backend,
        "root_fingerprint_sha256": ca.root.fingerprint(hashes.SHA256()).hex(),
    }


def print_ca_created(s: Settings, info: dict[str, str]) -> None:
    console.print(f"fleet CA created in {CaPaths.of(s.data_dir).dir}")
    for k, v in info.items():
        console.print(f"  {k:<24} {v}")
    if s.identity.key_backend == "file":
        console.print(
            "keep the root offline: `fleetwarden ca export-root --out DIR --remove` "
            "(needed again only for `fleetwarden ca rollover`)"
        )


@ca_app.command("init")
def ca_init(json_out: bool = JsonFlag) -> None:
    """Create the root CA and the issuing intermediate (keys per `identity.key_backend`)."""
    s = settings()
    require_init(s)
    info = create_ca(s)
    if json_out:
        print_json(info)
        return
    print_ca_created(s, info)


@ca_app.command("rollover")
def ca_rollover(
    root_dir: Annotated[
        Path | None,
        typer.Option(
            help="Directory holding the offline root (root.key, root.crt) as written by "
            "`ca export-root`; default: the root key in the data dir (file backend) or on "
            "the token / TPM."
        ),
    ] = None,
    days: Annotated[
        int | None,
        typer.Option(
            min=30, max=36500, help="Lifetime of the new issuing CA (default identity setting)."
        ),
    ] = None,
    json_out: bool = JsonFlag,
) -> None:
    """Replace the issuing CA: new key and intermediate signed by the root. The old one
    is retired but stays trusted and keeps publishing its CRL until its last
    certificate expires."""
    svc, reg = _service()
    try:
        summary = svc.rollover(
            cli_actor(), root_dir=root_dir, lifetime=timedelta(days=days) if days else None
        )
    finally:
        reg.close()  # type: ignore[attr-defined]
    if json_out:
        print_json(summary)
        return
    new, old = summary["issuing"], summary["retired"]
    console.print(
        f"issuing CA rolled over: generation {old['generation']} -> {summary['generation']}"
    )
    console.print(f"  new issuing CA  {new['subject']}")
    console.print(f"    certificate   {new['cert']}")
    console.print(f"    valid until   {new['not_after']}")
    console.print(f"    CRL           {new['crl_url']}")
    console.print(f"  retired         {old['subject']}")
    console.print(f"    certificate   {old['cert']}")
    console.print(
        "    trusted until "
        + (
            f"{old['trusted_until']} (its last certificate expires)"
            if old["trusted_until"]
            else "now: it has no valid certificates left"
        )
    )
    console.print(f"    CRL           {old['crl_url']} (still published)")
    console.print(f"  chain           {summary['chain']} (every accepted issuing CA + root)")
    console.print(f"  CRL bundle      {summary['crl_bundle']}")
    console.print(
        "new certificates come from the new issuing CA; a running `fleetwarden up` "
        "switches by itself. Devices that pin issuing.crt need the new one (EST cacerts "
        "serves both)."
    )
    if root_dir is not None:
        console.print(f"the root key stayed in {root_dir}: take it offline again")


@ca_app.command("export-root")
def ca_export_root(
    out: Annotated[Path, typer.Option(help="Directory to write root.key and root.crt to.")],
    remove: Annotated[bool, typer.Option(help="Remove the root key from the data dir.")] = False,
) -> None:
    """Copy the encrypted root key out (e.g. to removable media), optionally removing it."""
    s = settings()
    require_init(s)
    path = export_root(s.data_dir, s.identity, out, remove=remove)
    console.print(
        f"root key written to {path}" + (" and removed from the data dir" if remove else "")
    )


@ca_app.command("root-crl")
def ca_root_crl(
    root_dir: Annotated[
        Path | None,
        typer.Option(help="Directory holding the offline root (as written by `ca export-root`)."),
    ] = None,
) -> None:
    """Sign the root's CRL (ARL) again: needed before it runs out (`identity.root_crl_days`)
    when the root stays offline between rollovers."""
    s = settings()
    require_init(s)
    crl = resign_root_crl(s.data_dir, s.identity, root_dir=root_dir)
    console.print(
        f"root CRL written to {CaPaths.of(s.data_dir).root_crl} "
        f"(next update {crl.next_update_utc}); take the root offline again"
    )


@ca_app.command("crl")
def ca_crl() -> None:
    """Regenerate the CRL file now."""
    svc, reg = _service()
    try:
        crl = svc.regenerate_crl()
    finally:
        reg.close()  # type: ignore[attr-defined]
    console.print(
        f"CRL written to {svc.ca.paths.crl} ({len(list(crl))} entries, "
        f"next update {crl.next_update_utc})"
    )


@ca_app.command("server-cert")
def ca_server_cert(
    name: Annotated[list[str], typer.Option("--name", help="DNS name or IP (repeat).")],
    cert: Annotated[Path, typer.Option(help="Where to write the certificate (PEM, with CA).")],
    key: Annotated[Path, typer.Option(help="Where to write the private key (PEM, 0600).")],
    days: Annotated[int, typer.Option(min=1, max=825)] = 90,
    client_auth: Annotated[bool, typer.Option(help="Also allow TLS client use.")] = False,
) -> None:
    """Issue a server certificate (broker, gateway) from the fleet CA."""
    svc, reg = _service()
    try:
        issue_server_certificate(
            svc.ca,
            name,
            cert,
            key,
            registry=svc.registry,
            client_auth=client_auth,
            lifetime=timedelta(days=days),
        )
    finally:
        reg.close()  # type: ignore[attr-defined]
    console.print(f"server certificate written to {cert}, key to {key}")


@ca_app.command("provision")
def ca_provision(
    csrs: Annotated[list[Path], typer.Argument(help="CSR files (DER or PEM), CN = device id.")],
    out: Annotated[Path, typer.Option(help="Directory for <device>.crt (PEM, with the chain).")],
    json_out: bool = JsonFlag,
) -> None:
    """Factory-line provisioning: certify many registered devices' CSRs in one batch."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    ders: list[bytes] = []
    for f in csrs:
        raw = f.read_bytes()
        if b"-----BEGIN" in raw:
            with contextlib.suppress(ValueError):  # unreadable: refused below, in order
                raw = x509.load_pem_x509_csr(raw).public_bytes(serialization.Encoding.DER)
        ders.append(raw)
    svc, reg = _service()
    try:
        results = svc.provision(ders, cli_actor())
    finally:
        reg.close()  # type: ignore[attr-defined]
    out.mkdir(parents=True, exist_ok=True)
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in svc.ca.chain)
    report = []
    for f, r in zip(csrs, results, strict=True):
        if isinstance(r, Issued):
            target = out / f"{r.device_id}.crt"
            target.write_bytes(r.cert.public_bytes(serialization.Encoding.PEM) + chain)
            report.append(
                {"csr": str(f), "device_id": r.device_id, "serial": r.serial, "cert": str(target)}
            )
        else:
            report.append({"csr": str(f), "refused": str(r)})
    if json_out:
        print_json(report)
    else:
        for row in report:
            console.print(
                f"{row['csr']}: "
                + (
                    f"refused: {row['refused']}"
                    if "refused" in row
                    else f"{row['device_id']} -> {row['cert']}"
                )
            )
    if any("refused" in row for row in report):
        raise typer.Exit(65)


@ca_app.command("requests")
def ca_requests(json_out: bool = JsonFlag) -> None:
    """Enrolments waiting for manual approval."""
    svc, reg = _service()
    try:
        rows = svc.pending_requests()
    finally:
        reg.close()  # type: ignore[attr-defined]
    if json_out:
        print_json(rows)
        return
    for r in rows:
        console.print(f"{r['id']:>6}  {r['device_id']}  {r['created_at']}")


@ca_app.command("approve")
def ca_approve(request_id: int) -> None:
    """Approve a pending enrolment (the device gets its certificate on its next retry)."""
    svc, reg = _service()
    try:
        dev = svc.decide(request_id, True, cli_actor())
    finally:
        reg.close()  # type: ignore[attr-defined]
    console.print(f"request {request_id} of {dev} approved")


@ca_app.command("reject")
def ca_reject(request_id: int) -> None:
    """Reject a pending enrolment."""
    svc, reg = _service()
    try:
        dev = svc.decide(request_id, False, cli_actor())
    finally:
        reg.close()  # type: ignore[attr-defined]
    console.print(f"request {request_id} of {dev} rejected")


@ca_app.command("policy")
def ca_policy(
    group: str,
    lifetime_days: Annotated[int, typer.Option(min=1, max=3650)] = 30,
    renew_fraction: Annotated[float, typer.Option()] = 2 / 3,
    max_key_age_days: Annotated[int, typer.Option(min=1)] = 90,
    allow_key_reuse: Annotated[bool, typer.Option()] = False,
) -> None:
    """Set a group's rotation policy (certificate lifetime, renewal point, max key age)."""
    svc, reg = _service()
    try:
        svc.set_policy(
            group,
            lifetime_days=lifetime_days,
            renew_fraction=renew_fraction,
            max_key_age_days=max_key_age_days,
            allow_key_reuse=allow_key_reuse,
            actor=cli_actor(),
        )
    finally:
        reg.close()  # type: ignore[attr-defined]
    console.print(f"rotation policy of {group} set")


def token(
    device_id: Annotated[str, typer.Argument(help="Device id the token is bound to.")],
    ttl_hours: Annotated[
        float | None, typer.Option(help="Validity (default from settings).")
    ] = None,
) -> None:
    """Create a one-time EST enrolment token; prints the token alone (for scripts)."""
    svc, reg = _service()
    try:
        secret = svc.create_token(
            device_id, cli_actor(), timedelta(hours=ttl_hours) if ttl_hours else None
        )
    finally:
        reg.close()  # type: ignore[attr-defined]
    typer.echo(secret)


def revoke(
    device_id: str,
    reason: Annotated[
        str, typer.Option(help="key_compromise, superseded, cessation_of_operation, ...")
    ] = "unspecified",
    serial: Annotated[str | None, typer.Option(help="Only this certificate (hex serial).")] = None,
    json_out: bool = JsonFlag,
) -> None:
    """Revoke a device's certificates and publish a new CRL."""
    svc, reg = _service()
    try:
        serials = svc.revoke(device_id, reason, cli_actor(), serial=serial)
        svc.regenerate_crl()
    finally:
        reg.close()  # type: ignore[attr-defined]
    if json_out:
        print_json({"device_id": device_id, "revoked": serials, "reason": reason})
    else:
        console.print(f"revoked {', '.join(serials)} ({reason}); CRL updated")


def certs(device_id: str, json_out: bool = JsonFlag) -> None:
    """A device's certificates and key rotation state."""
    svc, reg = _service()
    try:
        rows = svc.certificates(device_id)
        key = svc.key_state(device_id)
    finally:
        reg.close()  # type: ignore[attr-defined]
    if json_out:
        print_json({"device_id": device_id, "certificates": rows, "key": key})
        return
    for r in rows:
        console.print(
            f"{r['serial']}  {r['status']:<10} until {r['not_after']}  via {r['issued_via']}"
        )
    if key:
        console.print(
            f"key {key['public_key_sha256'][:16]}... "
            f"first certified {key['key_first_certified_at']}, "
            f"{key['rotations']} rotation(s)"
        )


def add_device_commands(app: typer.Typer) -> None:
    app.command("token")(token)
    app.command("revoke")(revoke)
    app.command("certs")(certs)


__all__ = ["CaPaths", "add_device_commands", "ca_app"]
