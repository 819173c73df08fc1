"""A real fleetwarden control plane (``service.serve``) over HTTPS on ephemeral ports,
with a fleet CA, a manufacturer CA for factory certificates and an admin API token.

Session-scoped: starting it costs a second; tests use distinct device ids.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from identity_support import make_csr  # noqa: F401 (re-exported for the tests)
from sqlalchemy import func, select

from fleetwarden.identity.ca import CaPaths, init_ca
from fleetwarden.identity.models import IssuedCertificate
from fleetwarden.registry import Actor, Registry
from fleetwarden.registry.models import OutboxEvent
from fleetwarden.registry.schemas import DeviceCreate, Role, TokenCreate
from fleetwarden.settings import load_settings

ACTOR = Actor("test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_manufacturer_ca(d: Path) -> tuple[Any, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Acme factory CA")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .issuer_name(name)
        .subject_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    (d / "manufacturer.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


@dataclass
class Fleet:
    data: Path
    base: str
    crl_url: str
    admin_token: str
    registry: Registry
    paths: CaPaths
    maker_key: Any
    maker_cert: x509.Certificate
    ctx: Any = None
    loop: asyncio.AbstractEventLoop | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def service(self) -> Any:
        return self.ctx.app.state.identity

    def add_device(self, device_id: str, groups: list[str] | None = None) -> None:
        self.registry.add_device(DeviceCreate(id=device_id, groups=groups or []), ACTOR)

    def token(self, device_id: str, ttl: timedelta | None = None) -> str:
        return str(self.service.create_token(device_id, ACTOR, ttl))

    def issued_count(self) -> int:
        with self.registry.session() as s:
            return int(s.scalar(select(func.count()).select_from(IssuedCertificate)) or 0)

    def events(self) -> list[dict[str, Any]]:
        with self.registry.session() as s:
            return [r.payload for r in s.scalars(select(OutboxEvent).order_by(OutboxEvent.id))]

    def refusals(self) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("status_id") == 2]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "FLEETWARDEN_DATA_DIR": str(self.data)}
        return subprocess.run(
            [sys.executable, "-m", "fleetwarden", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def tls(self, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.paths.root_cert))
        if cert is not None:
            ctx.load_cert_chain(str(cert), str(key) if key else None)
        return ctx

    def factory_cert(self, device_id: str, key: Any) -> x509.Certificate:
        now = datetime.now(UTC)
        return (
            x509.CertificateBuilder()
            .issuer_name(self.maker_cert.subject)
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=3650))
            .sign(self.maker_key, hashes.SHA256())
        )


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    from fleetwarden.service import serve

    data = tmp_path_factory.mktemp("fleet") / "data"
    data.mkdir(mode=0o700)
    maker_key, maker_cert = make_manufacturer_ca(data.parent)
    port, crl_port = free_port(), free_port()
    (data / "fleetwarden.toml").write_text(
        f"api_port = {port}\n"
        "[identity]\n"
        f"crl_port = {crl_port}\n"
        f'manufacturer_ca_file = "{data.parent / "manufacturer.pem"}"\n'
        # the managed broker runs too (the fleet CA exists): never on the shared 8883
        "[gateway]\n"
        'host = "127.0.0.1"\n'
        f"port = {free_port()}\n"
    )
    os.environ.pop("FLEETWARDEN_CA_PASSPHRASE", None)
    settings = load_settings(data)
    reg = Registry.open(settings.effective_database_url)
    admin = reg.create_token(TokenCreate(name="admin", role=Role.ADMIN), ACTOR).token
    init_ca(data, settings.identity)
    fleet = Fleet(
        data=data,
        base=f"https://127.0.0.1:{port}",
        crl_url=settings.identity.crl_url(),
        admin_token=admin,
        registry=reg,
        paths=CaPaths.of(data),
        maker_key=maker_key,
        maker_cert=maker_cert,
    )
    ready = threading.Event()
    holder: dict[str, Any] = {}

    def on_ready(ctx: Any) -> None:
        fleet.ctx = ctx
        ready.set()

    def run() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        fleet.loop = loop
        task = loop.create_task(serve(settings, reg, on_ready=on_ready))
        holder["task"] = task
        try:
            loop.run_until_complete(task)
        except (asyncio.CancelledError, Exception) as exc:
            holder["error"] = exc
            ready.set()
        finally:
            loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(30), "server did not start"
    assert fleet.ctx is not None, holder.get("error")
    yield fleet
    assert fleet.loop is not None
    fleet.loop.call_soon_threadsafe(holder["task"].cancel)
    thread.join(15)
    reg.close()
