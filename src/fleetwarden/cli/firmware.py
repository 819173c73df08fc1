"""``fleetwarden firmware``: sign, verify, publish, distribute and roll out firmware (C6)."""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fleetwarden.cli._common import (
    JsonFlag,
    cli_actor,
    console,
    open_registry,
    print_json,
    settings,
)
from fleetwarden.errors import ValidationError
from fleetwarden.firmware import agent as agent_mod
from fleetwarden.firmware.errors import SigningKeyError
from fleetwarden.firmware.image import DEFAULT_HEADER_SIZE, ImageVersion, sign_image, verify_image
from fleetwarden.firmware.keys import (
    PASSPHRASE_ENV,
    generate_key,
    key_id,
    open_signer,
    public_pem,
    read_public_key,
    write_encrypted_key,
)
from fleetwarden.firmware.repository import load_signer
from fleetwarden.firmware.rollout import Feedback, RolloutService, Stage
from fleetwarden.firmware.service import FirmwareService, repository_for

app = typer.Typer(help="Signed firmware and OTA updates (control C6).", no_args_is_help=True)
product_app = typer.Typer(
    help="Firmware products and their trusted signing keys.", no_args_is_help=True
)
tuf_app = typer.Typer(help="The TUF repository that distributes firmware.", no_args_is_help=True)
rollout_app = typer.Typer(help="Staged rollouts.", no_args_is_help=True)
agent_app = typer.Typer(help="Device side (simulated MCUboot A/B device).", no_args_is_help=True)
app.add_typer(product_app, name="product")
app.add_typer(tuf_app, name="tuf")
app.add_typer(rollout_app, name="rollout")
app.add_typer(agent_app, name="agent")


def _passphrase(confirm: bool) -> bytes:
    env = os.environ.get(PASSPHRASE_ENV)
    if env is not None:
        return env.encode()
    p = getpass.getpass("key passphrase: ")
    if confirm and getpass.getpass("again: ") != p:
        raise SigningKeyError("passphrases differ")
    return p.encode()


@app.command()
def keygen(
    out: Annotated[Path, typer.Option("--out", help="Private key file (encrypted PKCS#8 PEM).")],
    type_: Annotated[str, typer.Option("--type", help="ed25519 or ecdsa-p256")] = "ecdsa-p256",
    pub: Annotated[Path | None, typer.Option(help="Also write the public key here.")] = None,
) -> None:
    """Create a signing key, encrypted with a passphrase (FLEETWARDEN_FIRMWARE_KEY_PASSPHRASE)."""
    if type_ not in {"ed25519", "ecdsa-p256"}:
        raise SigningKeyError("--type is ed25519 or ecdsa-p256")
    if out.exists():
        raise SigningKeyError(f"{out} exists; refusing to overwrite a key")
    key = generate_key(type_)  # type: ignore[arg-type]
    write_encrypted_key(out, key, _passphrase(confirm=True))
    if pub is not None:
        pub.write_text(public_pem(key.public_key()))
    console.print(f"key {key_id(key.public_key())} written to {out}")


@app.command()
def sign(
    raw: Annotated[Path, typer.Argument(help="Raw firmware binary.")],
    key: Annotated[str, typer.Option(help="PEM file, pkcs11:token=..;object=.. or exec:COMMAND")],
    version: Annotated[str, typer.Option(help="major.minor.revision[+build]")],
    security_counter: Annotated[int, typer.Option(min=0, max=0xFFFFFFFF)],
    out: Annotated[Path, typer.Option("--out", help="Signed MCUboot image.")],
    pub: Annotated[Path | None, typer.Option(help="Public key (external signer).")] = None,
    header_size: Annotated[int, typer.Option(min=32, max=0xFFFF)] = DEFAULT_HEADER_SIZE,
    json_out: bool = JsonFlag,
) -> None:
    """Wrap RAW into a signed MCUboot image (SHA-256, key hash, signature, security counter)."""
    signer = open_signer(key, public_key=pub)
    v = sign_image(
        raw,
        out,
        signer,
        version=ImageVersion.parse(version),
        security_counter=security_counter,
        header_size=header_size,
    )
    if json_out:
        print_json(
            {
                "image": str(out),
                "version": str(v.version),
                "security_counter": v.security_counter,
                "key_id": v.key_id,
                "sha256": v.file_sha256.hex(),
            }
        )
    else:
        console.print(
            f"signed {out}: version {v.version}, security counter {v.security_counter}, "
            f"key {v.key_id[:16]}"
        )


@app.command()
def verify(
    image: Annotated[Path, typer.Argument(help="MCUboot image.")],
    key: Annotated[list[Path], typer.Option("--key", help="Trusted public key (repeatable).")],
    json_out: bool = JsonFlag,
) -> None:
    """Verify IMAGE against trusted public keys; exit 0 and print version and counter."""
    v = verify_image(image, [read_public_key(k) for k in key])
    counter = "none" if v.security_counter is None else str(v.security_counter)
    if json_out:
        print_json(
            {
                "valid": True,
                "version": str(v.version),
                "security_counter": v.security_counter,
                "key_id": v.key_id,
                "algorithm": v.algorithm,
                "digest": v.digest.hex(),
                "sha256": v.file_sha256.hex(),
                "size": v.size,
            }
        )
    else:
        typer.echo(
            f"valid: version {v.version}, security counter {counter}, "
            f"{v.algorithm} key {v.key_id[:16]}"
        )


@app.command()
def publish(
    image: Annotated[Path, typer.Argument()],
    product: Annotated[str, typer.Option()],
    version: Annotated[str, typer.Option()],
    json_out: bool = JsonFlag,
) -> None:
    """Verify IMAGE against the product's keys, refuse downgrades, publish through TUF."""
    reg = open_registry()
    try:
        rel = FirmwareService(reg, settings()).publish(image, product, version, cli_actor())
    finally:
        reg.close()
    if json_out:
        print_json(rel.as_dict())
    else:
        console.print(
            f"published {product} {rel.version} (counter {rel.security_counter}) "
            f"as {rel.target_name}"
        )


@app.command("releases")
def releases(product: Annotated[str, typer.Argument()], json_out: bool = JsonFlag) -> None:
    """List a product's releases."""
    reg = open_registry()
    try:
        rows = FirmwareService(reg, settings()).list_releases(product)
    finally:
        reg.close()
    if json_out:
        print_json([r.as_dict() for r in rows])
        return
    t = Table("version", "counter", "size", "key", "target", "published")
    for r in rows:
        t.add_row(
            r.version,
            str(r.security_counter),
            str(r.size),
            r.key_id[:16],
            r.target_name,
            r.created_at.isoformat(timespec="seconds"),
        )
    console.print(t)


@product_app.command("add")
def product_add(name: Annotated[str, typer.Argument()], description: str | None = None) -> None:
    """Add a product line (one TUF delegated role each)."""
    reg = open_registry()
    try:
        FirmwareService(reg, settings()).add_product(name, cli_actor(), description)
    finally:
        reg.close()
    console.print(f"added firmware product {name}")


@product_app.command("list")
def product_list(json_out: bool = JsonFlag) -> None:
    reg = open_registry()
    try:
        names = FirmwareService(reg, settings()).list_products()
    finally:
        reg.close()
    if json_out:
        print_json(names)
    else:
        for n in names:
            typer.echo(n)


@product_app.command("trust-key")
def trust_key(
    product: Annotated[str, typer.Argument()],
    pub: Annotated[Path, typer.Argument(help="Public key PEM.")],
    label: str | None = None,
) -> None:
    """Trust a public key to sign PRODUCT's images."""
    reg = open_registry()
    try:
        k = FirmwareService(reg, settings()).trust_key(
            product, pub.read_bytes()[:65536], cli_actor(), label
        )
    finally:
        reg.close()
    console.print(f"trusted {k.algorithm} key {k.key_id[:16]} for {product}")


@product_app.command("revoke-key")
def revoke_key(
    product: Annotated[str, typer.Argument()],
    key_id_: Annotated[str, typer.Argument(metavar="KEY_ID")],
) -> None:
    """Stop trusting a signing key (C5 rotation: trust the new key first)."""
    reg = open_registry()
    try:
        FirmwareService(reg, settings()).revoke_key(product, key_id_, cli_actor())
    finally:
        reg.close()
    console.print(f"revoked key {key_id_} for {product}")


@product_app.command("keys")
def product_keys(product: Annotated[str, typer.Argument()], json_out: bool = JsonFlag) -> None:
    reg = open_registry()
    try:
        keys = FirmwareService(reg, settings()).list_keys(product)
    finally:
        reg.close()
    if json_out:
        print_json([k.__dict__ for k in keys])
    else:
        for k in keys:
            typer.echo(
                f"{k.key_id} {k.algorithm} {'revoked' if k.revoked else 'trusted'} {k.label or ''}"
            )


# TUF ------------------------------------------------------------------------------------


@tuf_app.command("init")
def tuf_init(
    root_key_dir: Annotated[
        Path | None, typer.Option(help="Where root keys go (keep offline).")
    ] = None,
    root_keys: Annotated[int, typer.Option(min=1, max=16)] = 1,
    threshold: Annotated[int, typer.Option(min=1, max=16)] = 1,
) -> None:
    """Create the TUF repository (root keys encrypted with the key passphrase)."""
    s = settings()
    repo = repository_for(s)
    d = root_key_dir or s.data_dir / "firmware" / "tuf-root-keys"
    files = repo.init(
        d, root_keys=root_keys, threshold=threshold, passphrase=_passphrase(confirm=True)
    )
    console.print(f"TUF repository at {repo.path}; root keys: {', '.join(map(str, files))}")
    console.print(f"devices are provisioned with {repo.metadata_dir / '1.root.json'}")


@tuf_app.command("refresh")
def tuf_refresh() -> None:
    """Re-sign snapshot/timestamp if due (``up`` does this automatically)."""
    done = repository_for(settings()).refresh()
    console.print(f"re-signed: {', '.join(done) or 'nothing due'}")


@tuf_app.command("rotate-root")
def tuf_rotate_root(
    root_key: Annotated[
        list[Path], typer.Option("--root-key", help="Current root key (repeat to threshold).")
    ],
    new_key_dir: Annotated[Path, typer.Option(help="Where the new root keys go.")],
    root_keys: Annotated[int, typer.Option(min=1, max=16)] = 1,
    threshold: Annotated[int, typer.Option(min=1, max=16)] = 1,
) -> None:
    """Replace the root keys; clients follow through the chain of root versions."""
    pw = _passphrase(confirm=False)
    signers = [load_signer(p, pw) for p in root_key]
    files = repository_for(settings()).rotate_root(
        signers, new_key_dir, root_keys=root_keys, threshold=threshold, passphrase=pw
    )
    console.print(f"root rotated; new root keys: {', '.join(map(str, files))}")


@tuf_app.command("rotate-key")
def tuf_rotate_key(
    role: Annotated[str, typer.Argument(help="targets, snapshot or timestamp")],
    root_key: Annotated[
        list[Path], typer.Option("--root-key", help="Current root key (repeat to threshold).")
    ],
) -> None:
    """Replace an online role's key (signed into a new root version)."""
    pw = _passphrase(confirm=False)
    repository_for(settings()).rotate_online(role, [load_signer(p, pw) for p in root_key])
    console.print(f"{role} key rotated")


# rollouts -------------------------------------------------------------------------------


@rollout_app.command("create")
def rollout_create(
    name: Annotated[str, typer.Argument()],
    product: Annotated[str, typer.Option()],
    version: Annotated[str, typer.Option()],
    group: Annotated[
        str | None, typer.Option(help="Registry group whose devices are targeted.")
    ] = None,
    device: Annotated[
        list[str] | None, typer.Option("--device", help="Target device (repeatable).")
    ] = None,
    stage: Annotated[
        list[str] | None, typer.Option("--stage", help="N% (cumulative) or devices:a,b")
    ] = None,
    success_threshold: Annotated[int, typer.Option(min=1, max=100)] = 95,
    error_threshold: Annotated[int, typer.Option(min=1, max=100)] = 10,
    error_action: Annotated[str, typer.Option(help="pause or stop")] = "pause",
    json_out: bool = JsonFlag,
) -> None:
    """Start a staged rollout of a published release."""
    reg = open_registry()
    try:
        out = RolloutService(reg).create(
            name,
            product,
            version,
            cli_actor(),
            group=group,
            devices=device or [],
            stages=[Stage.parse(x) for x in stage or []],
            success_threshold=success_threshold,
            error_threshold=error_threshold,
            error_action=error_action,
        )
    finally:
        reg.close()
    _show(out, json_out)


def _show(out: dict[str, object], json_out: bool) -> None:
    if json_out:
        print_json(out)
        return
    console.print(
        f"rollout {out['name']}: {out['product']} {out['version']} — {out['state']}, "
        f"group {out['current_group']}"
    )
    for g in out["groups"]:  # type: ignore[attr-defined]
        console.print(
            f"  group {g['index']}: {g['size']} devices, {g['succeeded']} ok, "
            f"{g['failed']} failed, {g['state']}"
        )


@rollout_app.command("list")
def rollout_list(json_out: bool = JsonFlag) -> None:
    reg = open_registry()
    try:
        rows = RolloutService(reg).all()
    finally:
        reg.close()
    if json_out:
        print_json(rows)
    else:
        for r in rows:
            typer.echo(
                f"{r['name']} {r['product']} {r['version']} {r['state']} group {r['current_group']}"
            )


@rollout_app.command("show")
def rollout_show(name: Annotated[str, typer.Argument()], json_out: bool = JsonFlag) -> None:
    reg = open_registry()
    try:
        out = RolloutService(reg).get(name)
    finally:
        reg.close()
    _show(out, json_out)


def _transition(name: str, op: str, json_out: bool) -> None:
    reg = open_registry()
    try:
        out = getattr(RolloutService(reg), op)(name, cli_actor())
    finally:
        reg.close()
    _show(out, json_out)


@rollout_app.command("pause")
def rollout_pause(name: Annotated[str, typer.Argument()], json_out: bool = JsonFlag) -> None:
    _transition(name, "pause", json_out)


@rollout_app.command("resume")
def rollout_resume(name: Annotated[str, typer.Argument()], json_out: bool = JsonFlag) -> None:
    _transition(name, "resume", json_out)


@rollout_app.command("cancel")
def rollout_cancel(name: Annotated[str, typer.Argument()], json_out: bool = JsonFlag) -> None:
    _transition(name, "cancel", json_out)


@rollout_app.command("rollback")
def rollout_rollback(name: Annotated[str, typer.Argument()], json_out: bool = JsonFlag) -> None:
    """Cancel the rollout and roll its devices back to the previous release."""
    _transition(name, "rollback", json_out)


@rollout_app.command("report")
def rollout_report(
    device: Annotated[str, typer.Argument()],
    status: Annotated[str, typer.Argument(help="proceeding, success or failure")],
    detail: str | None = None,
) -> None:
    """Record a device's result by hand (devices normally report over DDI)."""
    if status not in {"proceeding", "success", "failure"}:
        raise ValidationError("status is proceeding, success or failure")
    reg = open_registry()
    try:
        res = RolloutService(reg).record_feedback(
            [Feedback(device, status, detail)],  # type: ignore[arg-type]
            cli_actor().name,
        )
    finally:
        reg.close()
    console.print(f"applied {res.applied}, ignored {res.ignored}; {' '.join(res.transitions)}")


# device agent ---------------------------------------------------------------------------

DeviceDir = Annotated[Path, typer.Option("--device-dir", help="Simulated device directory.")]


@agent_app.command("provision")
def agent_provision(
    device_dir: DeviceDir,
    root: Annotated[Path, typer.Option(help="Trusted TUF root.json.")],
    key: Annotated[
        list[Path], typer.Option("--key", help="Firmware public key the bootloader trusts.")
    ],
    security_counter: int = 0,
) -> None:
    agent_mod.Device(device_dir).provision(root, key, security_counter)
    console.print(f"device provisioned in {device_dir}")


@agent_app.command("update")
def agent_update(
    device_dir: DeviceDir,
    target: Annotated[str, typer.Option(help="TUF target name, e.g. prod/1.2.0/prod-1.2.0.bin")],
    metadata_url: Annotated[str, typer.Option()],
    targets_url: Annotated[str, typer.Option()],
) -> None:
    """Refresh TUF, download, verify (signature and counter), install to the inactive slot."""
    v = agent_mod.update(agent_mod.Device(device_dir), metadata_url, targets_url, target)
    console.print(
        f"installed {v.version} (counter {v.security_counter}) in the inactive slot; "
        "reboot to try it"
    )


@agent_app.command("reboot")
def agent_reboot(device_dir: DeviceDir) -> None:
    typer.echo(agent_mod.Device(device_dir).reboot())


@agent_app.command("confirm")
def agent_confirm(device_dir: DeviceDir) -> None:
    st = agent_mod.Device(device_dir).confirm()
    typer.echo(f"confirmed slot {st.active}; security counter {st.security_counter}")


@agent_app.command("status")
def agent_status(device_dir: DeviceDir) -> None:
    import dataclasses

    print_json(dataclasses.asdict(agent_mod.Device(device_dir).state()))
