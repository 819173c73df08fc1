"""Agent logic: see the package docstring for the invariants."""

from __future__ import annotations

import base64
import json
import os
import secrets
import ssl
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from fleetwarden._internal.files import atomic_write, ensure_private_dir, write_secret
from fleetwarden.errors import Error
from fleetwarden.identity.errors import KeyBackendError
from fleetwarden.identity.keys import KeyBackend, Pkcs11Key, SoftwareKey, read_secret, sign_csr
from fleetwarden.identity.tlskey import DEFAULT_ENGINE, DEFAULT_MODULE, TokenKey, use_token_key

STATE = "agent.json"
TIMEOUT = 30.0
KEY_BACKENDS = ("file", "pkcs11")
DEFAULT_PIN_ENV = "FLEETWARDEN_PKCS11_PIN"


class AgentError(Error):
    """Enrolment or renewal failed; the current identity is untouched."""

    exit_code = 75  # EX_TEMPFAIL: retry later


class PendingApproval(AgentError):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"enrolment waits for operator approval; retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass
class AgentConfig:
    server: str  # https://host:port
    device_id: str
    ca_file: str  # trust anchor(s) for the EST server and the issued chain (PEM)
    factory_cert: str | None = None
    factory_key: str | None = None
    renew_fraction: float = 2 / 3
    jitter: float = 0.05  # +- share of the lifetime
    label: str | None = None
    # where the device key lives: "file" (key.pem, 0600) or "pkcs11" (generated on the
    # token, never extractable; TLS signs through the OpenSSL pkcs11 engine)
    key_backend: str = "file"
    pkcs11_module: str = str(DEFAULT_MODULE)
    pkcs11_token_label: str | None = None
    pkcs11_pin_env: str = DEFAULT_PIN_ENV  # the PIN itself is never stored
    pkcs11_pin_file: str | None = None
    pkcs11_engine: str = DEFAULT_ENGINE

    def __post_init__(self) -> None:
        if self.key_backend not in KEY_BACKENDS:
            raise AgentError(f"key backend must be one of {', '.join(KEY_BACKENDS)}")
        if self.key_backend == "pkcs11" and not self.pkcs11_token_label:
            raise AgentError("the pkcs11 key backend needs a token label")


class _HasPublicKey(Protocol):
    def public_key(self) -> CertificateIssuerPublicKeyTypes: ...


class Agent:
    def __init__(self, state_dir: Path, config: AgentConfig | None = None) -> None:
        self.dir = state_dir
        if config is None:
            try:
                raw = json.loads((state_dir / STATE).read_text())
            except (OSError, ValueError) as exc:
                raise AgentError(
                    f"no agent state in {state_dir}: run `agent enroll` first"
                ) from exc
            config = AgentConfig(**raw["config"])
            self.schedule: dict[str, Any] = raw.get("schedule", {})
            #: labels of the token keys: "current", "pending" (renewal in flight)
            self.token_keys: dict[str, str | None] = raw.get("token_keys", {})
        else:
            self.schedule = {}
            self.token_keys = {}
        self.config = config

    # -- files ---------------------------------------------------------------------------

    key_path = property(lambda self: self.dir / "key.pem")
    cert_path = property(lambda self: self.dir / "cert.pem")
    new_key_path = property(lambda self: self.dir / "key.new.pem")

    def _save_state(self) -> None:
        data = {
            "config": asdict(self.config),
            "schedule": self.schedule,
            "token_keys": self.token_keys,
        }
        atomic_write(self.dir / STATE, json.dumps(data, indent=2).encode(), mode=0o600)

    def certificate(self) -> x509.Certificate | None:
        try:
            return x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        except (OSError, ValueError):
            return None

    # -- protocol --------------------------------------------------------------------------

    def _url(self, op: str) -> str:
        label = f"/{self.config.label}" if self.config.label else ""
        return f"{self.config.server.rstrip('/')}/.well-known/est{label}/{op}"

    def _tls(self, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.config.ca_file)
        if cert:
            ctx.load_cert_chain(cert, key)
        return ctx

    def _current_tls(self) -> ssl.SSLContext:
        """TLS presenting the current certificate with the current key (file or token)."""
        if self.config.key_backend == "file":
            return self._tls(str(self.cert_path), str(self.key_path))
        label = self.token_keys.get("current")
        if not label:
            raise AgentError("no current token key is recorded: enrol again")
        # python-pkcs11 first: it refuses a module that another library in this process
        # initialised (the engine tolerates it), and it checks PIN, token and key label
        # with its own clear errors.
        self._token_backend(label, generate=False)
        ctx = self._tls()
        try:
            use_token_key(ctx, self.cert_path, self._token_key(label))
        except KeyBackendError as exc:
            raise AgentError(f"cannot use the token key for TLS: {exc}") from exc
        return ctx

    def _pin(self) -> bytes | None:
        c = self.config
        try:
            return read_secret(
                c.pkcs11_pin_env,
                Path(c.pkcs11_pin_file) if c.pkcs11_pin_file else None,
                "PKCS#11 PIN",
            )
        except KeyBackendError as exc:
            raise AgentError(str(exc)) from exc

    def _token_key(self, label: str) -> TokenKey:
        c = self.config
        assert c.pkcs11_token_label is not None  # checked in AgentConfig
        return TokenKey(
            module=Path(c.pkcs11_module),
            token_label=c.pkcs11_token_label,
            key_label=label,
            pin=self._pin(),
            engine=c.pkcs11_engine,
        )

    def _token_backend(self, label: str, *, generate: bool) -> Pkcs11Key:
        c = self.config
        assert c.pkcs11_token_label is not None
        module = Path(c.pkcs11_module)
        try:
            if generate:
                return Pkcs11Key.generate(
                    module, c.pkcs11_token_label, self._pin(), label, "ec-p256"
                )
            return Pkcs11Key.load(module, c.pkcs11_token_label, self._pin(), label)
        except KeyBackendError as exc:
            raise AgentError(str(exc)) from exc

    def _csr(self, key: KeyBackend) -> bytes:
        csr = sign_csr(
            x509.CertificateSigningRequestBuilder().subject_name(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.config.device_id)])
            ),
            key,
        )
        return base64.b64encode(csr.public_bytes(serialization.Encoding.DER))

    def _request(
        self,
        op: str,
        key: KeyBackend,
        *,
        auth: tuple[str, str] | None,
        tls: ssl.SSLContext,
    ) -> x509.Certificate:
        try:
            with httpx.Client(verify=tls, timeout=TIMEOUT) as http:
                intermediates = self._cacerts(http)
                r = http.post(
                    self._url(op),
                    content=self._csr(key),
                    headers={"Content-Type": "application/pkcs10"},
                    auth=httpx.BasicAuth(*auth) if auth else httpx.USE_CLIENT_DEFAULT,
                )
        except httpx.HTTPError as exc:
            raise AgentError(f"EST {op} failed: {exc}") from exc
        if r.status_code == 202:
            raise PendingApproval(int(r.headers.get("retry-after", "60") or 60))
        if r.status_code != 200:
            raise AgentError(f"EST {op} refused ({r.status_code}): {r.text.strip()[:300]}")
        try:
            certs = pkcs7.load_der_pkcs7_certificates(base64.b64decode(r.content))
        except ValueError as exc:
            raise AgentError(f"EST {op}: the response is not a PKCS#7 certs-only") from exc
        return self._confirm(certs[0] if certs else None, key, intermediates)

    def _cacerts(self, http: httpx.Client) -> list[x509.Certificate]:
        """The CA chain from ``cacerts`` (over TLS already anchored in ``ca_file``)."""
        r = http.get(self._url("cacerts"))
        if r.status_code != 200:
            raise AgentError(f"EST cacerts failed ({r.status_code})")
        try:
            certs = pkcs7.load_der_pkcs7_certificates(base64.b64decode(r.content))
        except ValueError as exc:
            raise AgentError("EST cacerts: not a PKCS#7 certs-only") from exc
        pem = serialization.Encoding.PEM
        atomic_write(self.dir / "chain.pem", b"".join(c.public_bytes(pem) for c in certs))
        return list(certs)

    def _confirm(
        self,
        cert: x509.Certificate | None,
        key: _HasPublicKey,
        intermediates: list[x509.Certificate],
    ) -> x509.Certificate:
        """The new certificate must carry our new key, name us and chain to a trust
        anchor from ``ca_file`` (through the intermediates from ``cacerts``)."""
        if cert is None or cert.public_key() != key.public_key():
            raise AgentError("the issued certificate does not carry the new key")
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not cns or cns[0].value != self.config.device_id:
            raise AgentError("the issued certificate names another device")
        anchors = x509.load_pem_x509_certificates(Path(self.config.ca_file).read_bytes())
        current = cert
        for _ in range(5):
            for trusted, pool in ((True, anchors), (False, intermediates)):
                parent = next((c for c in pool if c.subject == current.issuer), None)
                if parent is None:
                    continue
                try:
                    current.verify_directly_issued_by(parent)
                except (ValueError, TypeError, InvalidSignature) as exc:
                    raise AgentError("the issued certificate has a bad signature") from exc
                if trusted:
                    return cert
                current = parent
                break
            else:
                break
        raise AgentError("the issued certificate does not chain to the fleet CA")

    def _install(self, cert: x509.Certificate, key: KeyBackend, via: str) -> None:
        pem = serialization.Encoding.PEM
        # New key first (0600, atomic), then the certificate; both replace the old ones
        # only now, after the new certificate was confirmed.
        old_label = self.token_keys.get("current")
        if isinstance(key, SoftwareKey):
            write_secret(
                self.key_path,
                key.private_key.private_bytes(
                    pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                ),
            )
        else:
            self.token_keys = {"current": self.token_keys.get("pending"), "pending": None}
        atomic_write(self.cert_path, cert.public_bytes(pem))
        self.new_key_path.unlink(missing_ok=True)
        life = cert.not_valid_after_utc - cert.not_valid_before_utc
        jitter = (secrets.randbelow(2001) - 1000) / 1000 * self.config.jitter
        renew_at = cert.not_valid_before_utc + life * (self.config.renew_fraction + jitter)
        self.schedule = {
            "serial": format(cert.serial_number, "x"),
            "not_after": cert.not_valid_after_utc.isoformat(),
            "renew_at": renew_at.isoformat(),
            "last": via,
            "installed_at": datetime.now(UTC).isoformat(),
        }
        self._save_state()
        if old_label and old_label != self.token_keys.get("current"):
            # the rotated-out key goes only now; a failure leaves it on the token, unused
            self._drop_token_key(old_label)

    def _drop_token_key(self, label: str) -> None:
        try:
            self._token_backend(label, generate=False).destroy()
        except (AgentError, KeyBackendError):
            self.token_keys.setdefault("stale", label)
            self._save_state()

    def _fresh_key(self) -> KeyBackend:
        if self.config.key_backend == "pkcs11":
            stale = self.token_keys.get("pending")
            if stale:  # an earlier renewal that never completed
                self._drop_token_key(stale)
            stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
            label = f"{self.config.device_id}-{stamp}"
            self.token_keys["pending"] = label
            self._save_state()  # before the key exists, so a crash leaves a trace
            return self._token_backend(label, generate=True)
        key = ec.generate_private_key(ec.SECP256R1())
        write_secret(
            self.new_key_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        return SoftwareKey(key)

    # -- operations ------------------------------------------------------------------------

    def enroll(self, token: str | None = None) -> x509.Certificate:
        """First enrolment: with a one-time token, else with the factory certificate."""
        ensure_private_dir(self.dir)
        self._save_state()
        key = self._fresh_key()
        if token:
            cert = self._request(
                "simpleenroll", key, auth=(self.config.device_id, token), tls=self._tls()
            )
            via = "token"
        elif self.config.factory_cert and self.config.factory_key:
            cert = self._request(
                "simpleenroll",
                key,
                auth=None,
                tls=self._tls(self.config.factory_cert, self.config.factory_key),
            )
            via = "factory"
        else:
            raise AgentError("enrolment needs --token or a factory certificate and key")
        self._install(cert, key, via)
        return cert

    def due(self, now: datetime | None = None) -> bool:
        now = now or datetime.now(UTC)
        renew_at = self.schedule.get("renew_at")
        return renew_at is None or now >= datetime.fromisoformat(renew_at)

    def renew(self, *, force: bool = False) -> x509.Certificate | None:
        """Renew when due (or forced); None when not due yet."""
        now = datetime.now(UTC)
        current = self.certificate()
        if current is None or now >= current.not_valid_after_utc:
            # Expired offline (or lost): the current certificate cannot authenticate.
            if self.config.factory_cert and self.config.factory_key:
                return self.enroll()
            raise AgentError(
                "the certificate has expired and no factory identity is configured; "
                "enrol again with a new token"
            )
        if not force and not self.due(now):
            return None
        tls = self._current_tls()  # before the new key: a token problem costs nothing
        key = self._fresh_key()
        cert = self._request("simplereenroll", key, auth=None, tls=tls)
        self._install(cert, key, "renewal")
        return cert

    def status(self) -> dict[str, Any]:
        cert = self.certificate()
        now = datetime.now(UTC)
        out: dict[str, Any] = {
            "device_id": self.config.device_id,
            "server": self.config.server,
            "enrolled": cert is not None,
            "renewal_in_flight": self.new_key_path.exists() or bool(self.token_keys.get("pending")),
            "key_backend": self.config.key_backend,
        }
        if self.config.key_backend == "pkcs11":
            out["token_key_label"] = self.token_keys.get("current")
        if cert is not None:
            out.update(
                serial=format(cert.serial_number, "x"),
                not_before=cert.not_valid_before_utc.isoformat(),
                not_after=cert.not_valid_after_utc.isoformat(),
                expired=now >= cert.not_valid_after_utc,
                renew_at=self.schedule.get("renew_at"),
                due=self.due(now),
                seconds_left=int((cert.not_valid_after_utc - now) / timedelta(seconds=1)),
                key_mode=oct(os.stat(self.key_path).st_mode & 0o777)
                if self.key_path.exists()
                else None,
            )
        return out
