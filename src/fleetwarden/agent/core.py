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
from typing import Any

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from fleetwarden._internal.files import atomic_write, ensure_private_dir, write_secret
from fleetwarden.errors import Error

STATE = "agent.json"
TIMEOUT = 30.0


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
        else:
            self.schedule = {}
        self.config = config

    # -- files ---------------------------------------------------------------------------

    key_path = property(lambda self: self.dir / "key.pem")
    cert_path = property(lambda self: self.dir / "cert.pem")
    new_key_path = property(lambda self: self.dir / "key.new.pem")

    def _save_state(self) -> None:
        data = {"config": asdict(self.config), "schedule": self.schedule}
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

    def _csr(self, key: ec.EllipticCurvePrivateKey) -> bytes:
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.config.device_id)])
            )
            .sign(key, hashes.SHA256())
        )
        return base64.b64encode(csr.public_bytes(serialization.Encoding.DER))

    def _request(
        self,
        op: str,
        key: ec.EllipticCurvePrivateKey,
        *,
        auth: tuple[str, str] | None,
        client: tuple[str, str] | None,
    ) -> x509.Certificate:
        tls = self._tls(*client) if client else self._tls()
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
        key: ec.EllipticCurvePrivateKey,
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

    def _install(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, via: str) -> None:
        pem = serialization.Encoding.PEM
        # New key first (0600, atomic), then the certificate; both replace the old ones
        # only now, after the new certificate was confirmed.
        write_secret(
            self.key_path,
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        )
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

    def _fresh_key(self) -> ec.EllipticCurvePrivateKey:
        key = ec.generate_private_key(ec.SECP256R1())
        write_secret(
            self.new_key_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        return key

    # -- operations ------------------------------------------------------------------------

    def enroll(self, token: str | None = None) -> x509.Certificate:
        """First enrolment: with a one-time token, else with the factory certificate."""
        ensure_private_dir(self.dir)
        self._save_state()
        key = self._fresh_key()
        if token:
            cert = self._request(
                "simpleenroll", key, auth=(self.config.device_id, token), client=None
            )
            via = "token"
        elif self.config.factory_cert and self.config.factory_key:
            cert = self._request(
                "simpleenroll",
                key,
                auth=None,
                client=(self.config.factory_cert, self.config.factory_key),
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
        key = self._fresh_key()
        cert = self._request(
            "simplereenroll", key, auth=None, client=(str(self.cert_path), str(self.key_path))
        )
        self._install(cert, key, "renewal")
        return cert

    def status(self) -> dict[str, Any]:
        cert = self.certificate()
        now = datetime.now(UTC)
        out: dict[str, Any] = {
            "device_id": self.config.device_id,
            "server": self.config.server,
            "enrolled": cert is not None,
            "renewal_in_flight": self.new_key_path.exists(),
        }
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
