"""A throw-away PKI for tests and benchmarks (never for production identities).

Makes a fleet CA (root + issuing intermediate), a broker server certificate and device
certificates (CN = device id, SAN URI, EKU clientAuth), including the bad cases the
gateway must refuse: expired, revoked (with a DER CRL), issued by another CA. The real
fleet CA lives in the identity control; this mirrors its device profile closely enough
for the broker (EC P-256, clientAuth).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_NOW = dt.datetime.now(dt.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass
class Issued:
    cert: x509.Certificate
    #: None when the key lives in a token (PKCS#11) and never left it
    key: ec.EllipticCurvePrivateKey | None
    cert_path: Path
    key_path: Path

    @property
    def serial_hex(self) -> str:
        return format(self.cert.serial_number, "x")


@dataclass
class ScratchPKI:
    """A root, an issuing CA and helpers writing PEM files under ``directory``."""

    directory: Path
    name: str = "fleet"
    revoked: list[x509.Certificate] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = self._ca(f"{self.name} root", self.root_key, None, None, path_len=1)
        self.issuing_key = ec.generate_private_key(ec.SECP256R1())
        self.issuing = self._ca(
            f"{self.name} issuing", self.issuing_key, self.root, self.root_key, path_len=0
        )
        self.chain_path = self.directory / f"{self.name}-chain.pem"
        self.chain_path.write_bytes(
            self.issuing.public_bytes(serialization.Encoding.PEM)
            + self.root.public_bytes(serialization.Encoding.PEM)
        )

    def _ca(
        self,
        cn: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: x509.Certificate | None,
        issuer_key: ec.EllipticCurvePrivateKey | None,
        *,
        path_len: int,
    ) -> x509.Certificate:
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(issuer.subject if issuer else _name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_NOW - dt.timedelta(days=1))
            .not_valid_after(_NOW + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_len), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        )
        return b.sign(issuer_key or key, hashes.SHA256())

    def _leaf(
        self,
        cn: str,
        *,
        server: bool,
        not_before: dt.datetime,
        not_after: dt.datetime,
        key: ec.EllipticCurvePrivateKey | None = None,
        public_key: ec.EllipticCurvePublicKey | None = None,
    ) -> Issued:
        if public_key is None:
            key = key or ec.generate_private_key(ec.SECP256R1())
            public_key = key.public_key()
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.issuing.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName(cn),
                        x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1")),
                    ]
                    if server
                    else [x509.UniformResourceIdentifier(f"urn:fleetwarden:device:{cn}")]
                ),
                critical=False,
            )
        )
        cert = b.sign(self.issuing_key, hashes.SHA256())
        stem = self.directory / f"{self.name}-{cn}-{cert.serial_number % 10**8}"
        cert_path = stem.with_suffix(".crt")
        key_path = stem.with_suffix(".key")
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            key_path.write_bytes(_pem_key(key))
            key_path.chmod(0o600)
        return Issued(cert, key, cert_path, key_path)

    def server(self, cn: str = "localhost") -> Issued:
        return self._leaf(
            cn,
            server=True,
            not_before=_NOW - dt.timedelta(hours=1),
            not_after=_NOW + dt.timedelta(days=30),
        )

    def device(self, device_id: str, *, expired: bool = False) -> Issued:
        if expired:
            return self._leaf(
                device_id,
                server=False,
                not_before=_NOW - dt.timedelta(days=60),
                not_after=_NOW - dt.timedelta(days=30),
            )
        return self._leaf(
            device_id,
            server=False,
            not_before=_NOW - dt.timedelta(hours=1),
            not_after=_NOW + dt.timedelta(days=30),
        )

    def device_for_public_key(
        self, device_id: str, public_key: ec.EllipticCurvePublicKey
    ) -> Issued:
        """A device certificate for a key held elsewhere (a PKCS#11 token)."""
        return self._leaf(
            device_id,
            server=False,
            not_before=_NOW - dt.timedelta(hours=1),
            not_after=_NOW + dt.timedelta(days=30),
            public_key=public_key,
        )

    def revoke(self, issued: Issued) -> None:
        self.revoked.append(issued.cert)

    def write_crl(self, path: Path, *, pem: bool = False) -> Path:
        b = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.issuing.subject)
            .last_update(_NOW - dt.timedelta(minutes=5))
            .next_update(_NOW + dt.timedelta(days=1))
        )
        for cert in self.revoked:
            b = b.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(cert.serial_number)
                .revocation_date(_NOW - dt.timedelta(minutes=1))
                .build()
            )
        crl = b.sign(self.issuing_key, hashes.SHA256())
        enc = serialization.Encoding.PEM if pem else serialization.Encoding.DER
        path.write_bytes(crl.public_bytes(enc))
        return path
