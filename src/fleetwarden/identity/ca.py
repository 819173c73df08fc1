"""The fleet CA (control C1): root + issuing intermediate, certificate profiles, CRL.

Layout under ``<data>/identity/`` (the gateway and the broker read the public parts):

- ``root.crt``            root certificate (PEM); ``root.key`` only while the root is
                          online (``fleetwarden ca export-root --remove`` takes it away)
- ``issuing.crt``         issuing intermediate (PEM); ``issuing.key`` for the file backend
- ``chain.pem``           issuing + root: the CA chain a TLS server trusts devices with
- ``crl/issuing.crl``     current DER CRL of the issuing CA (``crl/issuing.crl.pem`` too)
- ``server.crt/.key``     the platform's own TLS certificate (API + EST port)

Profiles (invariants):

- device: CN = device id and SAN URI ``urn:fleetwarden:device:<id>``, EKU clientAuth,
  KU digitalSignature, AKI/SKI, CRL distribution point, ``notAfter`` never beyond the
  issuing CA's; key type checked by :func:`check_public_key` before anything is signed;
- server: SAN DNS/IP names, EKU serverAuth (+ clientAuth for broker bridges);
- intermediate: pathLen 0, keyCertSign + cRLSign.
"""

from __future__ import annotations

import hashlib
import ipaddress
import shutil
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetwarden._internal.files import atomic_write, ensure_private_dir, write_secret
from fleetwarden.errors import ConflictError
from fleetwarden.identity.config import IdentitySettings
from fleetwarden.identity.errors import (
    CaNotInitializedError,
    EnrollmentRefused,
    KeyBackendError,
)
from fleetwarden.identity.keys import (
    KeyBackend,
    Pkcs11Key,
    SoftwareKey,
    TpmKey,
    algorithm_of,
    read_secret,
    sign_certificate,
    sign_crl,
)

DEVICE_URI_PREFIX = "urn:fleetwarden:device:"
#: clock skew allowance: certificates start a little in the past
BACKDATE = timedelta(minutes=5)

REASONS = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key_compromise": x509.ReasonFlags.key_compromise,
    "ca_compromise": x509.ReasonFlags.ca_compromise,
    "affiliation_changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation_of_operation": x509.ReasonFlags.cessation_of_operation,
    "certificate_hold": x509.ReasonFlags.certificate_hold,
    "privilege_withdrawn": x509.ReasonFlags.privilege_withdrawn,
}


@dataclass(frozen=True)
class CaPaths:
    """Where the CA's files live (see module docstring)."""

    dir: Path

    @classmethod
    def of(cls, data_dir: Path) -> CaPaths:
        return cls(data_dir / "identity")

    root_cert = property(lambda self: self.dir / "root.crt")
    root_key = property(lambda self: self.dir / "root.key")
    issuing_cert = property(lambda self: self.dir / "issuing.crt")
    issuing_key = property(lambda self: self.dir / "issuing.key")
    chain = property(lambda self: self.dir / "chain.pem")
    passphrase = property(lambda self: self.dir / "ca.pass")
    crl = property(lambda self: self.dir / "crl" / "issuing.crl")
    crl_pem = property(lambda self: self.dir / "crl" / "issuing.crl.pem")
    server_cert = property(lambda self: self.dir / "server.crt")
    server_key = property(lambda self: self.dir / "server.key")

    def exists(self) -> bool:
        return bool(self.issuing_cert.exists() and self.root_cert.exists())


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def public_key_fingerprint(key: Any) -> str:
    """SHA-256 of the DER SubjectPublicKeyInfo: the key's identity across certificates."""
    spki: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return sha256_hex(spki)


def check_public_key(key: object, s: IdentitySettings, allowed: Sequence[str] | None = None) -> str:
    """Refuse weak or disallowed keys; return the key type name."""
    allowed = list(allowed or s.allowed_key_types)
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < max(2048, s.min_rsa_bits):
            raise EnrollmentRefused(
                f"RSA key of {key.key_size} bits refused (minimum {max(2048, s.min_rsa_bits)})"
            )
        if key.public_numbers().e < 65537:
            raise EnrollmentRefused("RSA public exponent below 65537 refused")
        kind = "rsa"
    elif isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        kind = algorithm_of(key)
    else:
        raise EnrollmentRefused(f"key type {type(key).__name__} is not allowed")
    if kind not in allowed:
        raise EnrollmentRefused(f"key type {kind} not allowed by policy (allowed: {allowed})")
    return kind


def device_id_of(cert: x509.Certificate) -> str | None:
    """The device id a certificate names: SAN URI first, then the CN."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
            if uri.startswith(DEVICE_URI_PREFIX):
                return uri[len(DEVICE_URI_PREFIX) :]
    except x509.ExtensionNotFound:
        pass
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else None


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _ski(key: CertificateIssuerPublicKeyTypes) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key)


class FleetCA:
    """The online issuing CA: its certificate, chain and signing key backend."""

    def __init__(
        self,
        settings: IdentitySettings,
        paths: CaPaths,
        cert: x509.Certificate,
        root: x509.Certificate,
        key: KeyBackend,
    ) -> None:
        self.settings = settings
        self.paths = paths
        self.cert = cert
        self.root = root
        self.key = key
        self.crl_url = settings.crl_url()
        self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
        self._crl_dp = x509.CRLDistributionPoints(
            [
                x509.DistributionPoint(
                    full_name=[x509.UniformResourceIdentifier(self.crl_url)],
                    relative_name=None,
                    reasons=None,
                    crl_issuer=None,
                )
            ]
        )
        self.not_after = cert.not_valid_after_utc

    @property
    def chain(self) -> list[x509.Certificate]:
        return [self.cert, self.root]

    # -- loading -----------------------------------------------------------------------

    @classmethod
    def load(cls, data_dir: Path, settings: IdentitySettings) -> FleetCA:
        paths = CaPaths.of(data_dir)
        if not paths.exists():
            raise CaNotInitializedError(
                f"no fleet CA in {paths.dir}; run `fleetwarden ca init` first"
            )
        cert = x509.load_pem_x509_certificate(paths.issuing_cert.read_bytes())
        root = x509.load_pem_x509_certificate(paths.root_cert.read_bytes())
        key = load_key(settings, paths, "issuing")
        if public_key_fingerprint(key.public_key()) != public_key_fingerprint(cert.public_key()):
            raise KeyBackendError("the issuing key does not match issuing.crt")
        return cls(settings, paths, cert, root, key)

    # -- profiles ----------------------------------------------------------------------

    def _validity(self, lifetime: timedelta, now: datetime) -> tuple[datetime, datetime]:
        not_after = min(now + lifetime, self.not_after)
        if not_after <= now:
            raise EnrollmentRefused("the issuing CA has expired; nothing can be issued")
        return now - BACKDATE, not_after

    def device_builder(
        self,
        device_id: str,
        public_key: CertificateIssuerPublicKeyTypes,
        *,
        lifetime: timedelta | None = None,
        now: datetime | None = None,
    ) -> x509.CertificateBuilder:
        now = now or datetime.now(UTC)
        nb, na = self._validity(lifetime or timedelta(days=self.settings.device_lifetime_days), now)
        ku_enc = isinstance(public_key, rsa.RSAPublicKey)
        return x509.CertificateBuilder(
            issuer_name=self.cert.subject,
            subject_name=_name(device_id),
            public_key=public_key,
            serial_number=x509.random_serial_number(),
            not_valid_before=nb,
            not_valid_after=na,
            extensions=[
                x509.Extension(
                    x509.BasicConstraints.oid,
                    True,
                    x509.BasicConstraints(ca=False, path_length=None),
                ),
                x509.Extension(
                    x509.KeyUsage.oid,
                    True,
                    x509.KeyUsage(
                        digital_signature=True,
                        content_commitment=False,
                        key_encipherment=ku_enc,
                        data_encipherment=False,
                        key_agreement=False,
                        key_cert_sign=False,
                        crl_sign=False,
                        encipher_only=False,
                        decipher_only=False,
                    ),
                ),
                x509.Extension(
                    x509.ExtendedKeyUsage.oid,
                    False,
                    x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                ),
                x509.Extension(
                    x509.SubjectAlternativeName.oid,
                    False,
                    x509.SubjectAlternativeName(
                        [x509.UniformResourceIdentifier(DEVICE_URI_PREFIX + device_id)]
                    ),
                ),
                x509.Extension(x509.SubjectKeyIdentifier.oid, False, _ski(public_key)),
                x509.Extension(x509.AuthorityKeyIdentifier.oid, False, self._aki),
                x509.Extension(x509.CRLDistributionPoints.oid, False, self._crl_dp),
            ],
        )

    def issue_device(
        self,
        device_id: str,
        public_key: CertificateIssuerPublicKeyTypes,
        *,
        lifetime: timedelta | None = None,
        now: datetime | None = None,
    ) -> x509.Certificate:
        return sign_certificate(
            self.device_builder(device_id, public_key, lifetime=lifetime, now=now), self.key
        )

    def issue_server(
        self,
        public_key: CertificateIssuerPublicKeyTypes,
        names: Iterable[str],
        *,
        lifetime: timedelta | None = None,
        client_auth: bool = False,
    ) -> x509.Certificate:
        """A TLS server certificate for the platform (API/EST, broker, gateway).

        ``names`` are DNS names or IP addresses; the first is the CN.
        """
        names = [n for n in dict.fromkeys(names) if n]
        if not names:
            raise EnrollmentRefused("a server certificate needs at least one name")
        general: list[x509.GeneralName] = []
        for n in names:
            try:
                general.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                general.append(x509.DNSName(n))
        now = datetime.now(UTC)
        nb, na = self._validity(lifetime or timedelta(days=self.settings.server_lifetime_days), now)
        ekus = [ExtendedKeyUsageOID.SERVER_AUTH]
        if client_auth:
            ekus.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = (
            x509.CertificateBuilder()
            .issuer_name(self.cert.subject)
            .subject_name(_name(names[0], self.settings.ca_name))
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(nb)
            .not_valid_after(na)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
            .add_extension(x509.SubjectAlternativeName(general), critical=False)
            .add_extension(_ski(public_key), critical=False)
            .add_extension(self._aki, critical=False)
            .add_extension(self._crl_dp, critical=False)
        )
        return sign_certificate(builder, self.key)

    # -- CRL ---------------------------------------------------------------------------

    def build_crl(
        self,
        revoked: Iterable[tuple[int, datetime, str | None]],
        *,
        now: datetime | None = None,
    ) -> x509.CertificateRevocationList:
        """A DER-ready CRL with an Issuing Distribution Point matching the certs' CRL DP.

        ``revoked`` yields (serial, revocation time, reason name).
        """
        now = now or datetime.now(UTC)
        entries: list[x509.RevokedCertificate] = []
        reason_ext = {
            name: x509.Extension(x509.CRLReason.oid, False, x509.CRLReason(flag))
            for name, flag in REASONS.items()
            if name != "unspecified"
        }
        for serial, when, reason in revoked:
            ext = reason_ext.get(reason) if reason else None
            entries.append(
                x509.RevokedCertificateBuilder(
                    serial_number=serial,
                    revocation_date=when,
                    extensions=[ext] if ext else [],
                ).build()
            )
        idp = x509.IssuingDistributionPoint(
            full_name=[x509.UniformResourceIdentifier(self.crl_url)],
            relative_name=None,
            only_contains_user_certs=True,
            only_contains_ca_certs=False,
            only_some_reasons=None,
            indirect_crl=False,
            only_contains_attribute_certs=False,
        )
        builder = x509.CertificateRevocationListBuilder(
            issuer_name=self.cert.subject,
            last_update=now - BACKDATE,
            next_update=now + timedelta(hours=self.settings.crl_validity_hours),
            extensions=[
                x509.Extension(x509.AuthorityKeyIdentifier.oid, False, self._aki),
                x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(_next_crl_number())),
                x509.Extension(x509.IssuingDistributionPoint.oid, True, idp),
            ],
            revoked_certificates=entries,
        )
        return sign_crl(builder, self.key)

    def write_crl(self, crl: x509.CertificateRevocationList) -> None:
        atomic_write(self.paths.crl, crl.public_bytes(serialization.Encoding.DER))
        atomic_write(self.paths.crl_pem, crl.public_bytes(serialization.Encoding.PEM))


_crl_lock = threading.Lock()
_last_crl_number = 0


def _next_crl_number() -> int:
    """Milliseconds since the epoch, bumped past the last one this process used: strictly
    increasing across restarts and within a process without a counter to persist."""
    global _last_crl_number
    with _crl_lock:
        _last_crl_number = max(time.time_ns() // 1_000_000, _last_crl_number + 1)
        return _last_crl_number


# -- key loading / creation -----------------------------------------------------------


def _passphrase(settings: IdentitySettings, paths: CaPaths, *, create: bool) -> bytes:
    file = settings.passphrase_file or paths.passphrase
    secret = read_secret(settings.passphrase_env, file if file.exists() else None, "passphrase")
    if secret is not None:
        return secret
    if not create:
        raise KeyBackendError(
            f"the CA key passphrase is missing: set {settings.passphrase_env} or create {file}"
        )
    import secrets

    value = secrets.token_urlsafe(32).encode()
    write_secret(file, value + b"\n")
    return value


def _pin(settings: IdentitySettings) -> bytes | None:
    return read_secret(settings.pkcs11_pin_env, settings.pkcs11_pin_file, "PKCS#11 PIN")


def load_key(settings: IdentitySettings, paths: CaPaths, which: str) -> KeyBackend:
    if settings.key_backend == "tpm":
        algorithm = "ec-p384" if which == "root" else settings.issuing_key_type
        return TpmKey(settings.tpm_tcti, f"{settings.ca_name}-{which}", algorithm)
    if settings.key_backend == "pkcs11":
        return Pkcs11Key.load(
            settings.pkcs11_module,
            settings.pkcs11_token_label,
            _pin(settings),
            f"{settings.ca_name}-{which}",
        )
    path = paths.root_key if which == "root" else paths.issuing_key
    if not path.exists():
        raise KeyBackendError(
            f"{path} is not here (the {which} key is offline); bring it back to use it"
        )
    return SoftwareKey.load(path, _passphrase(settings, paths, create=False))


def _new_key(settings: IdentitySettings, paths: CaPaths, which: str, algorithm: str) -> KeyBackend:
    if settings.key_backend == "tpm":
        return TpmKey(settings.tpm_tcti, f"{settings.ca_name}-{which}", algorithm)
    if settings.key_backend == "pkcs11":
        return Pkcs11Key.generate(
            settings.pkcs11_module,
            settings.pkcs11_token_label,
            _pin(settings),
            f"{settings.ca_name}-{which}",
            algorithm,
        )
    key = SoftwareKey.generate(algorithm)
    path = paths.root_key if which == "root" else paths.issuing_key
    key.save(path, _passphrase(settings, paths, create=True))
    return key


def init_ca(data_dir: Path, settings: IdentitySettings) -> FleetCA:
    """Create the root and the issuing intermediate (``fleetwarden ca init``)."""
    paths = CaPaths.of(data_dir)
    if paths.root_cert.exists() or paths.issuing_cert.exists():
        raise ConflictError(f"a fleet CA already exists in {paths.dir}")
    ensure_private_dir(paths.dir)
    now = datetime.now(UTC)
    root_key = _new_key(settings, paths, "root", "ec-p384")
    root_name = _name(f"{settings.ca_name} root CA", settings.ca_name)
    root_pub = root_key.public_key()
    root = sign_certificate(
        x509.CertificateBuilder()
        .issuer_name(root_name)
        .subject_name(root_name)
        .public_key(root_pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=settings.root_lifetime_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(_ski(root_pub), critical=False),
        root_key,
    )
    issuing_key = _new_key(settings, paths, "issuing", settings.issuing_key_type)
    ipub = issuing_key.public_key()
    issuing = sign_certificate(
        x509.CertificateBuilder()
        .issuer_name(root_name)
        .subject_name(_name(f"{settings.ca_name} issuing CA", settings.ca_name))
        .public_key(ipub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(
            min(now + timedelta(days=settings.issuing_lifetime_days), root.not_valid_after_utc)
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(_ski(ipub), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_pub), critical=False
        ),
        root_key,
    )
    pem = serialization.Encoding.PEM
    atomic_write(paths.root_cert, root.public_bytes(pem))
    atomic_write(paths.chain, issuing.public_bytes(pem) + root.public_bytes(pem))
    # issuing.crt last: its presence is what "the CA exists" means.
    atomic_write(paths.issuing_cert, issuing.public_bytes(pem))
    if isinstance(root_key, Pkcs11Key | TpmKey):
        root_key.close()  # only the issuing key stays in use
    ca = FleetCA(settings, paths, issuing, root, issuing_key)
    ca.write_crl(ca.build_crl([]))
    return ca


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def export_root(data_dir: Path, settings: IdentitySettings, out: Path, *, remove: bool) -> Path:
    """Copy the (encrypted) root key and certificate to ``out``; optionally remove the key
    from the data directory so the root is kept offline."""
    paths = CaPaths.of(data_dir)
    if settings.key_backend != "file":
        raise KeyBackendError(
            "a PKCS#11 root key cannot be exported (it is not extractable); keep the token offline"
        )
    if not paths.root_key.exists():
        raise KeyBackendError(f"{paths.root_key} is not here: the root is already offline")
    ensure_private_dir(out)
    write_secret(out / "root.key", paths.root_key.read_bytes())
    shutil.copyfile(paths.root_cert, out / "root.crt")
    if remove:
        paths.root_key.unlink()
    return out / "root.key"


def load_pem_bundle(path: Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise KeyBackendError(f"cannot read certificates from {path}: {exc}") from exc
