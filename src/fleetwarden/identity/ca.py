"""The fleet CA (control C1): root + issuing intermediate, certificate profiles, CRL.

Layout under ``<data>/identity/`` (the gateway and the broker read the public parts):

- ``root.crt``            root certificate (PEM); ``root.key`` only while the root is
                          online (``fleetwarden ca export-root --remove`` takes it away)
- ``issuing.crt``         the current issuing intermediate (PEM); ``issuing.key`` for the
                          file backend
- ``ca-state.json``       the current issuing CA's generation (absent: 1)
- ``retired/issuing-<g>.crt/.key``  issuing CAs replaced by ``fleetwarden ca rollover``,
                          kept to verify their certificates and to sign their CRLs
- ``chain.pem``           current issuing + retired issuing CAs that still have valid
                          certificates + root: what a TLS server trusts devices with
- ``crl/<name>.crl``      DER CRL of each issuing CA (``issuing`` for generation 1,
                          ``issuing-<g>`` after a rollover), ``crl/<name>.crl.pem`` too
- ``crl/root.crl``        the root's CRL over the issuing CAs (ARL; empty unless an
                          issuing CA is revoked), valid ``root_crl_days``, re-signed by
                          ``ca init``, ``ca rollover`` and ``ca root-crl`` (root key needed)
- ``crl/all.crl.pem``     every issuing CA's CRL and the ARL in one PEM file (broker,
                          ``openssl verify -crl_check_all -CRLfile``)
- ``server.crt/.key``     the platform's own TLS certificate (API + EST port)

Profiles (invariants):

- device: CN = device id and SAN URI ``urn:fleetwarden:device:<id>``, EKU clientAuth,
  KU digitalSignature, AKI/SKI, CRL distribution point, ``notAfter`` never beyond the
  issuing CA's; key type checked by :func:`check_public_key` before anything is signed;
- server: SAN DNS/IP names, EKU serverAuth (+ clientAuth for broker bridges);
- intermediate: pathLen 0, keyCertSign + cRLSign, ``notAfter`` never beyond the root's;
  each generation has its own subject (``... issuing CA <g>`` from 2 on), key, CRL and
  CRL distribution point, so verifiers never confuse two issuing CAs or their CRLs.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
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
    #: generation 1's CRL (the only one until a rollover; see :meth:`crl_of`)
    crl = property(lambda self: self.dir / "crl" / "issuing.crl")
    crl_pem = property(lambda self: self.dir / "crl" / "issuing.crl.pem")
    #: every live issuing CA's CRL and the root's CRL (ARL), PEM, one after the other
    crl_bundle = property(lambda self: self.dir / "crl" / "all.crl.pem")
    #: the root's CRL over the issuing CAs (ARL), signed only when the root key is here
    root_crl = property(lambda self: self.dir / "crl" / "root.crl")
    root_crl_pem = property(lambda self: self.dir / "crl" / "root.crl.pem")
    server_cert = property(lambda self: self.dir / "server.crt")
    server_key = property(lambda self: self.dir / "server.key")
    state = property(lambda self: self.dir / "ca-state.json")
    retired_dir = property(lambda self: self.dir / "retired")

    def crl_of(self, name: str) -> Path:
        return Path(self.dir, "crl", f"{name}.crl")

    def crl_pem_of(self, name: str) -> Path:
        return Path(self.dir, "crl", f"{name}.crl.pem")

    def retired_cert(self, generation: int) -> Path:
        return Path(self.dir, "retired", f"issuing-{generation}.crt")

    def retired_key(self, generation: int) -> Path:
        return Path(self.dir, "retired", f"issuing-{generation}.key")

    def generation(self) -> int:
        """The current issuing CA's generation (1 until the first rollover)."""
        try:
            raw = json.loads(self.state.read_text())
        except FileNotFoundError:
            return 1
        except (OSError, ValueError) as exc:
            raise KeyBackendError(f"cannot read {self.state}: {exc}") from exc
        g = raw.get("generation") if isinstance(raw, dict) else None
        if not isinstance(g, int) or isinstance(g, bool) or not 1 <= g <= 10_000:
            raise KeyBackendError(f"{self.state}: 'generation' must be an integer >= 1")
        return g

    def retired_generations(self) -> list[int]:
        found = []
        for f in self.retired_dir.glob("issuing-*.crt"):
            m = re.fullmatch(r"issuing-([1-9][0-9]{0,4})\.crt", f.name)
            if m:
                found.append(int(m.group(1)))
        return sorted(found)

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


@dataclass(frozen=True, slots=True)
class KeyIds:
    """A public key's two identifiers, from one serialisation of it."""

    #: SHA-256 of the DER SubjectPublicKeyInfo, hex (see :func:`public_key_fingerprint`)
    fingerprint: str
    #: the SubjectKeyIdentifier (RFC 5280 4.2.1.2 method 1: SHA-1 of the subjectPublicKey
    #: bits), as ``x509.SubjectKeyIdentifier.from_public_key`` computes it
    ski: x509.SubjectKeyIdentifier


def key_ids(key: CertificateIssuerPublicKeyTypes) -> KeyIds:
    """The fingerprint and SubjectKeyIdentifier of ``key``. For EC and EdDSA keys the
    subjectPublicKey bits are the last bytes of the SubjectPublicKeyInfo (the
    uncompressed point, the raw key), so one serialisation serves both; RSA keys are
    hashed in their PKCS#1 form, as ``from_public_key`` does."""
    spki: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if isinstance(key, ec.EllipticCurvePublicKey):
        bits = spki[-(2 * ((key.curve.key_size + 7) // 8) + 1) :]
    elif isinstance(key, ed25519.Ed25519PublicKey):
        bits = spki[-32:]
    else:
        return KeyIds(sha256_hex(spki), _ski(key))
    return KeyIds(sha256_hex(spki), x509.SubjectKeyIdentifier(hashlib.sha1(bits).digest()))  # noqa: S324 (RFC 5280 key id, not a signature)


#: bits of a certificate serial: 159, so that it is positive and at most 20 octets
#: (RFC 5280 4.1.2.2) and its hex form always has 40 digits
_SERIAL_BITS = 159
_SERIAL_TIME_BITS = 48  # milliseconds since 1970, good until the year 10889
_SERIAL_RANDOM_BITS = _SERIAL_BITS - 1 - _SERIAL_TIME_BITS  # 110


def time_ordered_serial(now: float | None = None) -> int:
    """A serial for a certificate the fleet CA issues: the top bit set (fixed length),
    then the issuance time in milliseconds, then 110 bits from the OS CSPRNG (the
    CA/Browser Forum asks for at least 64 unpredictable bits, against chosen-prefix
    collisions).

    Serials issued one after another sort one after another, so the registry's
    primary-key index takes each new certificate on its last page instead of on a
    random one: in a large registry a random serial cost a page write per
    certificate at the commit and again at the WAL checkpoint. The time it reveals is
    the certificate's notBefore anyway."""
    ms = int((time.time() if now is None else now) * 1000) & ((1 << _SERIAL_TIME_BITS) - 1)
    rand = int.from_bytes(os.urandom(14), "big") >> (112 - _SERIAL_RANDOM_BITS)
    return (1 << (_SERIAL_BITS - 1)) | (ms << _SERIAL_RANDOM_BITS) | rand


def check_public_key(
    key: object,
    s: IdentitySettings,
    allowed: Sequence[str] | None = None,
    *,
    kind: str | None = None,
) -> str:
    """Refuse weak or disallowed keys; return the key type name. ``kind``: the type
    name when the caller read it from the key's canonical encoding (an EC or EdDSA
    key, see ``identity.csr``), so only the policy is left to check."""
    allowed = allowed or s.allowed_key_types
    if kind is None:
        kind = _key_kind(key, s)
    if kind not in allowed:
        raise EnrollmentRefused(f"key type {kind} not allowed by policy (allowed: {list(allowed)})")
    return kind


def _key_kind(key: object, s: IdentitySettings) -> str:
    """The type name of an acceptable key; weak and unknown keys refused."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < max(2048, s.min_rsa_bits):
            raise EnrollmentRefused(
                f"RSA key of {key.key_size} bits refused (minimum {max(2048, s.min_rsa_bits)})"
            )
        if key.public_numbers().e < 65537:
            raise EnrollmentRefused("RSA public exponent below 65537 refused")
        return "rsa"
    if isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        return algorithm_of(key)
    raise EnrollmentRefused(f"key type {type(key).__name__} is not allowed")


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


def crl_name(generation: int) -> str:
    """CRL file / URL name of an issuing CA generation (generation 1 keeps the name every
    certificate issued before the first rollover points to)."""
    return "issuing" if generation == 1 else f"issuing-{generation}"


def issuing_label(ca_name: str, generation: int) -> str:
    """PKCS#11 / TPM key label of an issuing CA generation."""
    return f"{ca_name}-issuing" if generation == 1 else f"{ca_name}-issuing-{generation}"


def issuing_name(ca_name: str, generation: int) -> x509.Name:
    cn = f"{ca_name} issuing CA" if generation == 1 else f"{ca_name} issuing CA {generation}"
    return _name(cn, ca_name)


class FleetCA:
    """The online issuing CA: its certificate, chain and signing key backend."""

    def __init__(
        self,
        settings: IdentitySettings,
        paths: CaPaths,
        cert: x509.Certificate,
        root: x509.Certificate,
        key: KeyBackend,
        *,
        generation: int = 1,
        retired: Sequence[FleetCA] = (),
    ) -> None:
        self.settings = settings
        self.paths = paths
        self.cert = cert
        self.root = root
        self.key = key
        self.generation = generation
        #: retired issuing CAs (newest first) whose certificates may still be in use
        self.retired: list[FleetCA] = list(retired)
        self.crl_name = crl_name(generation)
        self.crl_url = settings.crl_url(self.crl_name)
        #: hex SubjectKeyIdentifier: recorded with every certificate this CA issues
        self.key_id = _ski(key.public_key()).digest.hex()
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
        """The chain of what this CA issues now: issuing CA, root."""
        return [self.cert, self.root]

    @property
    def issuers(self) -> list[FleetCA]:
        """Every issuing CA whose certificates are accepted: current first, then retired."""
        return [self, *self.retired]

    @property
    def trusted(self) -> list[x509.Certificate]:
        """What verifiers need: every accepted issuing CA, then the root (``chain.pem``,
        EST ``cacerts``, the TLS client-certificate trust store)."""
        return [*(c.cert for c in self.issuers), self.root]

    @property
    def crl_file(self) -> Path:
        return self.paths.crl_of(self.crl_name)

    @property
    def crl_pem_file(self) -> Path:
        return self.paths.crl_pem_of(self.crl_name)

    # -- loading -----------------------------------------------------------------------

    @classmethod
    def load(cls, data_dir: Path, settings: IdentitySettings) -> FleetCA:
        paths = CaPaths.of(data_dir)
        if not paths.exists():
            raise CaNotInitializedError(
                f"no fleet CA in {paths.dir}; run `fleetwarden ca init` first"
            )
        generation = paths.generation()
        cert = x509.load_pem_x509_certificate(paths.issuing_cert.read_bytes())
        root = x509.load_pem_x509_certificate(paths.root_cert.read_bytes())
        key = _load_issuing_key(settings, paths, generation, retired=False)
        if public_key_fingerprint(key.public_key()) != public_key_fingerprint(cert.public_key()):
            raise KeyBackendError("the issuing key does not match issuing.crt")
        now = datetime.now(UTC)
        retired = []
        for g in reversed(paths.retired_generations()):
            if g >= generation:
                continue
            rcert = x509.load_pem_x509_certificate(paths.retired_cert(g).read_bytes())
            if rcert.not_valid_after_utc <= now:
                continue  # expired: so is everything it issued
            rkey = _load_issuing_key(settings, paths, g, retired=True)
            if public_key_fingerprint(rkey.public_key()) != public_key_fingerprint(
                rcert.public_key()
            ):
                raise KeyBackendError(f"the key of retired issuing CA {g} does not match its cert")
            retired.append(cls(settings, paths, rcert, root, rkey, generation=g))
        return cls(settings, paths, cert, root, key, generation=generation, retired=retired)

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
        ski: x509.SubjectKeyIdentifier | None = None,
    ) -> x509.CertificateBuilder:
        """The device certificate profile for ``public_key`` (``ski``: its key
        identifier when the caller already has it, see :func:`key_ids`)."""
        now = now or datetime.now(UTC)
        nb, na = self._validity(lifetime or timedelta(days=self.settings.device_lifetime_days), now)
        ku_enc = isinstance(public_key, rsa.RSAPublicKey)
        return x509.CertificateBuilder(
            issuer_name=self.cert.subject,
            subject_name=_name(device_id),
            public_key=public_key,
            serial_number=time_ordered_serial(),
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
                x509.Extension(x509.SubjectKeyIdentifier.oid, False, ski or _ski(public_key)),
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
        ski: x509.SubjectKeyIdentifier | None = None,
    ) -> x509.Certificate:
        return sign_certificate(
            self.device_builder(device_id, public_key, lifetime=lifetime, now=now, ski=ski),
            self.key,
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
            .serial_number(time_ordered_serial())
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
        """This issuing CA's CRL files (DER and PEM); see :meth:`write_trust_files`."""
        atomic_write(self.crl_file, crl.public_bytes(serialization.Encoding.DER))
        atomic_write(self.crl_pem_file, crl.public_bytes(serialization.Encoding.PEM))

    def write_trust_files(self) -> None:
        """``chain.pem`` (every accepted issuing CA + root) and ``crl/all.crl.pem`` (their
        CRLs), rewritten only when they change (the broker re-reads them on change).

        Skipped when another process has rolled the CA over since this one was loaded
        (this process reloads on the rollover event): a stale writer must not take the
        new issuing CA out of the trust files."""
        if self.paths.generation() != self.generation:
            return
        pem = serialization.Encoding.PEM
        _write_if_changed(self.paths.chain, b"".join(c.public_bytes(pem) for c in self.trusted))
        parts = []
        for f in [*(c.crl_pem_file for c in self.issuers), self.paths.root_crl_pem]:
            try:
                parts.append(f.read_bytes())
            except FileNotFoundError:
                continue
        _write_if_changed(self.paths.crl_bundle, b"".join(parts))


def _write_if_changed(path: Path, data: bytes) -> None:
    try:
        if path.read_bytes() == data:
            return
    except FileNotFoundError:
        pass
    atomic_write(path, data)


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
    """The root key, or the current issuing CA's key."""
    if which != "root":
        return _load_issuing_key(settings, paths, paths.generation(), retired=False)
    return _load_key_at(settings, paths, f"{settings.ca_name}-root", "ec-p384", paths.root_key)


def _load_issuing_key(
    settings: IdentitySettings, paths: CaPaths, generation: int, *, retired: bool
) -> KeyBackend:
    file = paths.retired_key(generation) if retired else paths.issuing_key
    label = issuing_label(settings.ca_name, generation)
    return _load_key_at(settings, paths, label, settings.issuing_key_type, file)


def _load_key_at(
    settings: IdentitySettings, paths: CaPaths, label: str, algorithm: str, file: Path
) -> KeyBackend:
    if settings.key_backend == "tpm":
        return TpmKey(settings.tpm_tcti, label, algorithm)
    if settings.key_backend == "pkcs11":
        return Pkcs11Key.load(
            settings.pkcs11_module, settings.pkcs11_token_label, _pin(settings), label
        )
    if not file.exists():
        raise KeyBackendError(f"{file} is not here (the key is offline); bring it back to use it")
    return SoftwareKey.load(file, _passphrase(settings, paths, create=False))


def _new_key(
    settings: IdentitySettings,
    paths: CaPaths,
    label: str,
    algorithm: str,
    file: Path,
) -> KeyBackend:
    if settings.key_backend == "tpm":
        return TpmKey(settings.tpm_tcti, label, algorithm)
    if settings.key_backend == "pkcs11":
        return Pkcs11Key.generate(
            settings.pkcs11_module,
            settings.pkcs11_token_label,
            _pin(settings),
            label,
            algorithm,
        )
    key = SoftwareKey.generate(algorithm)
    key.save(file, _passphrase(settings, paths, create=True))
    return key


def init_ca(data_dir: Path, settings: IdentitySettings) -> FleetCA:
    """Create the root and the issuing intermediate (``fleetwarden ca init``)."""
    paths = CaPaths.of(data_dir)
    if paths.root_cert.exists() or paths.issuing_cert.exists():
        raise ConflictError(f"a fleet CA already exists in {paths.dir}")
    ensure_private_dir(paths.dir)
    now = datetime.now(UTC)
    root_key = _new_key(settings, paths, f"{settings.ca_name}-root", "ec-p384", paths.root_key)
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
    issuing_key = _new_key(
        settings,
        paths,
        issuing_label(settings.ca_name, 1),
        settings.issuing_key_type,
        paths.issuing_key,
    )
    issuing = _sign_intermediate(
        settings,
        root,
        root_key,
        issuing_key,
        1,
        now,
        min(now + timedelta(days=settings.issuing_lifetime_days), root.not_valid_after_utc),
    )
    pem = serialization.Encoding.PEM
    atomic_write(paths.root_cert, root.public_bytes(pem))
    atomic_write(paths.chain, issuing.public_bytes(pem) + root.public_bytes(pem))
    # issuing.crt last: its presence is what "the CA exists" means.
    atomic_write(paths.issuing_cert, issuing.public_bytes(pem))
    write_root_crl(settings, paths, root, root_key, now=now)
    if isinstance(root_key, Pkcs11Key | TpmKey):
        root_key.close()  # only the issuing key stays in use
    ca = FleetCA(settings, paths, issuing, root, issuing_key)
    ca.write_crl(ca.build_crl([]))
    ca.write_trust_files()
    return ca


def _sign_intermediate(
    settings: IdentitySettings,
    root: x509.Certificate,
    root_key: KeyBackend,
    issuing_key: KeyBackend,
    generation: int,
    now: datetime,
    not_after: datetime,
) -> x509.Certificate:
    if not_after > root.not_valid_after_utc:  # the invariant; callers clamp or refuse first
        raise ValueError("an issuing CA may not outlive its root")
    ipub = issuing_key.public_key()
    root_pub = root_key.public_key()
    return sign_certificate(
        x509.CertificateBuilder()
        .issuer_name(root.subject)
        .subject_name(issuing_name(settings.ca_name, generation))
        .public_key(ipub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(_ski(ipub), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_pub), critical=False
        ),
        root_key,
    )


def write_root_crl(
    settings: IdentitySettings,
    paths: CaPaths,
    root: x509.Certificate,
    root_key: KeyBackend,
    *,
    now: datetime | None = None,
) -> x509.CertificateRevocationList:
    """The root's CRL over the issuing CAs (ARL), so that verifiers checking the whole
    chain (``openssl verify -crl_check_all``) find one. It lists nothing: a retired
    issuing CA is not revoked (its certificates stay valid). nextUpdate is
    ``root_crl_days`` away (never past the root): the offline root signs it again at
    each rollover or with ``fleetwarden ca root-crl``."""
    now = now or datetime.now(UTC)
    idp = x509.IssuingDistributionPoint(
        full_name=None,
        relative_name=None,
        only_contains_user_certs=False,
        only_contains_ca_certs=True,
        only_some_reasons=None,
        indirect_crl=False,
        only_contains_attribute_certs=False,
    )
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=root.subject,
        last_update=now - BACKDATE,
        next_update=min(now + timedelta(days=settings.root_crl_days), root.not_valid_after_utc),
        extensions=[
            x509.Extension(
                x509.AuthorityKeyIdentifier.oid,
                False,
                x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
            ),
            x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(_next_crl_number())),
            x509.Extension(x509.IssuingDistributionPoint.oid, True, idp),
        ],
    )
    crl = sign_crl(builder, root_key)
    atomic_write(paths.root_crl, crl.public_bytes(serialization.Encoding.DER))
    atomic_write(paths.root_crl_pem, crl.public_bytes(serialization.Encoding.PEM))
    return crl


def resign_root_crl(
    data_dir: Path, settings: IdentitySettings, *, root_dir: Path | None = None
) -> x509.CertificateRevocationList:
    """``fleetwarden ca root-crl``: sign the ARL again (root key here or from
    ``root_dir``) and refresh the CRL bundle."""
    ca = FleetCA.load(data_dir, settings)
    root_key = _load_root_for_rollover(settings, ca.paths, ca.root, root_dir)
    try:
        crl = write_root_crl(settings, ca.paths, ca.root, root_key)
    finally:
        if isinstance(root_key, Pkcs11Key | TpmKey):
            root_key.close()
    ca.write_trust_files()
    return crl


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


# -- issuing CA rollover ----------------------------------------------------------------


class RootUnavailableError(KeyBackendError):
    """The root key is needed (rollover) but is offline or cannot be used."""


class RootExpiringError(ConflictError):
    """The root expires before the new issuing CA would: roll the root over first."""


@dataclass(frozen=True)
class Rollover:
    """What ``rollover_issuing`` changed."""

    new: FleetCA
    retired: FleetCA


def _load_root_for_rollover(
    settings: IdentitySettings, paths: CaPaths, root: x509.Certificate, root_dir: Path | None
) -> KeyBackend:
    if root_dir is not None and settings.key_backend != "file":
        raise RootUnavailableError(
            f"--root-dir is for the file key backend; with {settings.key_backend} the root key "
            "is used where it lives (connect the token / TPM that holds it)"
        )
    if settings.key_backend == "file":
        if root_dir is not None:
            key_file = root_dir / "root.key"
            crt_file = root_dir / "root.crt"
            if not key_file.is_file():
                raise RootUnavailableError(f"no root.key in {root_dir}")
            if crt_file.is_file():
                try:
                    other = x509.load_pem_x509_certificate(crt_file.read_bytes())
                except ValueError as exc:
                    raise RootUnavailableError(f"{crt_file} is not a PEM certificate") from exc
                if other != root:
                    raise RootUnavailableError(
                        f"{crt_file} is not this fleet's root ({paths.root_cert})"
                    )
        else:
            key_file = paths.root_key
            if not key_file.exists():
                raise RootUnavailableError(
                    f"the root key is offline ({key_file} is not here): bring it back with "
                    "--root-dir DIR (the directory `fleetwarden ca export-root` wrote)"
                )
        try:
            key: KeyBackend = SoftwareKey.load(key_file, _passphrase(settings, paths, create=False))
        except KeyBackendError as exc:
            raise RootUnavailableError(
                f"cannot use the root key {key_file}: {exc} (the root key is encrypted with "
                f"the CA passphrase: {settings.passphrase_env} or the passphrase file)"
            ) from exc
    else:
        try:
            key = load_key(settings, paths, "root")
        except KeyBackendError as exc:
            raise RootUnavailableError(f"cannot use the root key: {exc}") from exc
    if public_key_fingerprint(key.public_key()) != public_key_fingerprint(root.public_key()):
        raise RootUnavailableError("this root key does not belong to the fleet's root.crt")
    return key


def rollover_issuing(
    current: FleetCA,
    *,
    root_dir: Path | None = None,
    lifetime: timedelta | None = None,
    now: datetime | None = None,
) -> Rollover:
    """Replace the issuing CA (``fleetwarden ca rollover``): a new key in the configured
    backend, a new intermediate signed by the root; the old one moves to ``retired/``
    with its key (to sign its CRLs) and stays trusted while its certificates are valid.

    ``current`` is the loaded CA (its keys are reused, not opened twice: a TPM has few
    object slots). The caller (:meth:`IdentityService.rollover`) publishes the CRLs and
    records the event. Refused, with nothing changed: root key absent or unusable, root expiring
    before the new issuing CA would.
    """
    now = now or datetime.now(UTC)
    settings = current.settings
    paths = current.paths
    root = current.root
    lifetime = lifetime or timedelta(days=settings.issuing_lifetime_days)
    not_after = now + lifetime
    if root.not_valid_after_utc < not_after:
        raise RootExpiringError(
            f"the root expires {root.not_valid_after_utc:%Y-%m-%d}, before the new issuing CA "
            f"would ({not_after:%Y-%m-%d}); roll the root over (new root) or choose a shorter "
            "issuing lifetime with --days"
        )
    root_key = _load_root_for_rollover(settings, paths, root, root_dir)
    old_gen = current.generation
    gen = max([old_gen, *paths.retired_generations()]) + 1
    pem = serialization.Encoding.PEM
    ensure_private_dir(paths.retired_dir)
    # Keep the old CA first (certificate and, for the file backend, its key): after a
    # crash from here on, nothing of it is lost.
    if settings.key_backend == "file":
        write_secret(paths.retired_key(old_gen), paths.issuing_key.read_bytes())
    atomic_write(paths.retired_cert(old_gen), current.cert.public_bytes(pem))
    new_key_file = paths.dir / f".issuing-{gen}.key.new"
    try:
        key = _new_key(
            settings,
            paths,
            issuing_label(settings.ca_name, gen),
            settings.issuing_key_type,
            new_key_file,
        )
        cert = _sign_intermediate(settings, root, root_key, key, gen, now, not_after)
        write_root_crl(settings, paths, root, root_key, now=now)
    except BaseException:
        new_key_file.unlink(missing_ok=True)
        raise
    finally:
        if isinstance(root_key, Pkcs11Key | TpmKey):
            root_key.close()
    # Switch: key, state, certificate (issuing.crt last, as in init_ca).
    if settings.key_backend == "file":
        os.replace(new_key_file, paths.issuing_key)
    atomic_write(paths.state, json.dumps({"generation": gen}).encode() + b"\n")
    atomic_write(paths.issuing_cert, cert.public_bytes(pem))
    retired = FleetCA(settings, paths, current.cert, root, current.key, generation=old_gen)
    new = FleetCA(
        settings,
        paths,
        cert,
        root,
        key,
        generation=gen,
        retired=[retired, *current.retired],
    )
    new.write_crl(new.build_crl([]))
    new.write_trust_files()
    return Rollover(new=new, retired=retired)
