"""TLS for the API/EST port: server certificate from the fleet CA, optional client certs.

How the EST handlers see the client certificate: uvicorn verifies nothing and puts no
peer certificate in the ASGI scope. :class:`TlsInfoProtocol` subclasses uvicorn's
httptools protocol; when a connection is made it reads the peer certificate from the
``ssl_object`` of the transport (already verified by OpenSSL against the fleet and
manufacturer CAs) and adds the ASGI TLS extension
(https://asgi.readthedocs.io/en/latest/specs/tls.html) to every request's scope:
``scope["extensions"]["tls"]["client_cert_chain"]`` = [PEM of the client leaf].
The SSL context is handed to uvicorn through its public ``ssl_context_factory`` hook.

Invariants:

- client certificates are OPTIONAL at the TLS layer (``CERT_OPTIONAL``): API clients
  with bearer tokens connect without one; a certificate that is presented must chain to
  the fleet CA or a configured manufacturer CA, or the handshake fails;
- the TLS layer deliberately ignores certificate *time* (``X509_V_FLAG_NO_CHECK_TIME``)
  so that an expired device certificate reaches the EST handler, which refuses it with
  a clear reason and an audit event instead of a bare TLS alert; revocation is also
  decided by the handler from the registry;
- a handshake refused for an unknown CA is recorded as an Authentication failure event
  (through :class:`AuditedSSLObject`, a ``SSLContext.sslobject_class``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fleetwarden._internal.files import atomic_write, write_secret
from fleetwarden.events import authentication
from fleetwarden.identity.ca import CaPaths, FleetCA, load_pem_bundle
from fleetwarden.identity.config import IdentitySettings
from fleetwarden.registry import Actor, Registry
from fleetwarden.settings import Settings

log = logging.getLogger(__name__)

#: OpenSSL X509_V_FLAG_NO_CHECK_TIME (not in Python's VerifyFlags enum)
X509_V_FLAG_NO_CHECK_TIME = 0x200000


class TlsInfoProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the ASGI ``tls`` scope extension."""

    _tls: dict[str, Any] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is None:
            self._tls = None
            return
        der = sslobj.getpeercert(binary_form=True)
        chain = [ssl.DER_cert_to_PEM_cert(der)] if der else []
        version = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}.get(sslobj.version() or "")
        self._tls = {
            "server_cert": None,
            "client_cert_chain": chain,
            "client_cert_name": None,
            "client_cert_error": None,
            "tls_version": version,
            "cipher_suite": None,
        }

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._tls is not None:
            self.scope["extensions"] = {"tls": cast(dict[object, object], self._tls)}


class AuditedSSLObject(ssl.SSLObject):
    """Reports handshakes refused by certificate verification (unknown CA...)."""

    on_refused: Callable[[str], None] | None = None

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except ssl.SSLCertVerificationError as exc:
            hook = type(self).on_refused
            if hook is not None:
                try:
                    hook(str(exc.verify_message or exc.reason or exc))
                except Exception:  # auditing must never break the TLS stack
                    log.exception("could not record a refused TLS handshake")
            raise


@dataclass
class ServerTls:
    context: ssl.SSLContext
    protocol: type[HttpToolsProtocol]

    def uvicorn_kwargs(self) -> dict[str, Any]:
        ctx = self.context
        return {"http": self.protocol, "ssl_context_factory": lambda _cfg, _default: ctx}


def client_ca_bundle(ca: FleetCA, manufacturer: list[x509.Certificate]) -> str:
    pem = serialization.Encoding.PEM
    return "".join(c.public_bytes(pem).decode() for c in [*ca.trusted, *manufacturer])


def build_context(
    cert_file: str,
    key_file: str,
    client_cas: str,
    on_refused: Callable[[str], None] | None,
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    ctx.load_verify_locations(cadata=client_cas)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.verify_flags = ctx.verify_flags | ssl.VERIFY_X509_PARTIAL_CHAIN | X509_V_FLAG_NO_CHECK_TIME
    ctx.sslobject_class = type(
        "FleetSSLObject",
        (AuditedSSLObject,),
        {"on_refused": staticmethod(on_refused) if on_refused else None},
    )
    return ctx


def server_names(settings: Settings) -> list[str]:
    names = list(settings.identity.server_names)
    if settings.api_host not in {"0.0.0.0", "::", ""}:  # noqa: S104 (a comparison)
        names.append(settings.api_host)
    names.append("127.0.0.1")
    return list(dict.fromkeys(names))


def ensure_server_certificate(
    ca: FleetCA,
    names: list[str],
    registry: Registry | None,
    *,
    force: bool = False,
    cert_path: Path | None = None,
    key_path: Path | None = None,
) -> tuple[str, str]:
    """(cert file, key file) of a platform TLS certificate (the API's by default, or the
    one at ``cert_path``/``key_path``, e.g. the broker's); (re)issued when missing, when
    its names changed, when another CA issued it, or past 2/3 of its life."""
    cert_file = cert_path or ca.paths.server_cert
    key_file = key_path or ca.paths.server_key
    if not force and cert_file.exists() and key_file.exists():
        try:
            current = x509.load_pem_x509_certificates(cert_file.read_bytes())[0]
            san = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            have = {str(v) for v in san.get_values_for_type(x509.DNSName)} | {
                str(v) for v in san.get_values_for_type(x509.IPAddress)
            }
            life = current.not_valid_after_utc - current.not_valid_before_utc
            fresh = datetime.now(UTC) < current.not_valid_before_utc + life * 2 / 3
            if fresh and set(names) <= have and current.issuer == ca.cert.subject:
                return str(cert_file), str(key_file)
        except (ValueError, IndexError, x509.ExtensionNotFound):
            pass  # unreadable: issue a new one
    issue_server_certificate(ca, names, cert_file, key_file, registry=registry)
    return str(cert_file), str(key_file)


def issue_server_certificate(
    ca: FleetCA,
    names: list[str],
    cert_path: Any,
    key_path: Any,
    *,
    registry: Registry | None = None,
    client_auth: bool = False,
    lifetime: timedelta | None = None,
) -> tuple[Any, Any]:
    """Issue a TLS server certificate (for the API/EST port, the MQTT broker, the gateway)
    with a fresh P-256 key; write ``cert_path`` (leaf + issuing CA, PEM) and ``key_path``
    (unencrypted PKCS#8, 0600: a TLS server must load it unattended)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = ca.issue_server(key.public_key(), names, client_auth=client_auth, lifetime=lifetime)
    pem = serialization.Encoding.PEM
    write_secret(
        key_path,
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    atomic_write(cert_path, cert.public_bytes(pem) + ca.cert.public_bytes(pem))
    if registry is not None:
        from fleetwarden.identity.service import IdentityService

        IdentityService(registry, ca).record_server_certificate(
            cert, Actor(name="fleetwarden:server-profile", via="service")
        )
    return cert_path, key_path


def manufacturer_cas(s: IdentitySettings) -> list[x509.Certificate]:
    return load_pem_bundle(s.manufacturer_ca_file) if s.manufacturer_ca_file else []


def server_tls(settings: Settings, registry: Registry) -> ServerTls | None:
    """TLS for ``fleetwarden up`` when the fleet CA exists; None means plain HTTP."""
    if not CaPaths.of(settings.data_dir).exists():
        return None
    ca = FleetCA.load(settings.data_dir, settings.identity)
    cert_file, key_file = ensure_server_certificate(ca, server_names(settings), registry)

    def refused(reason: str) -> None:
        def write() -> None:
            with registry.session() as s:
                registry.record(
                    s,
                    authentication(
                        device_uid=None,
                        src_ip=None,
                        success=False,
                        message=f"TLS client certificate refused: {reason}",
                        protocol="TLS",
                        extra={"unmapped": {"identity_event": "tls.client_cert_refused"}},
                    ),
                )

        try:
            asyncio.get_running_loop().run_in_executor(None, write)
        except RuntimeError:
            write()

    ctx = build_context(
        cert_file, key_file, client_ca_bundle(ca, manufacturer_cas(settings.identity)), refused
    )
    return ServerTls(ctx, TlsInfoProtocol)
