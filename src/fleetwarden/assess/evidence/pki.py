"""Certificates (``certs/``, ``cas/``) and CRLs (``crls/``), PEM or DER.

A file may hold any number of PEM certificates; a DER file holds one. A file whose PEM
blocks do not all parse is refused as a whole (a half-read file could hide the one
certificate that matters).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from fleetwarden.assess.errors import EvidenceError
from fleetwarden.assess.evidence import _io
from fleetwarden.assess.evidence.types import CertInfo, CrlInfo

PEM_CERT = b"-----BEGIN CERTIFICATE-----"
PEM_CRL = b"-----BEGIN X509 CRL-----"
MAX_CERTS_PER_FILE = 10_000


def _cn(name: x509.Name) -> str:
    try:
        attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        return ""
    return str(attrs[0].value)[:256] if attrs else ""


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def info(cert: x509.Certificate, path: str) -> CertInfo:
    key = cert.public_key()
    modulus = None
    if isinstance(key, rsa.RSAPublicKey):
        key_type, bits = "rsa", key.key_size
        modulus = key.public_numbers().n
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key_type, bits = f"ec-{key.curve.name}", key.curve.key_size
    elif isinstance(key, ed25519.Ed25519PublicKey):
        key_type, bits = "ed25519", 256
    elif isinstance(key, ed448.Ed448PublicKey):
        key_type, bits = "ed448", 448
    elif isinstance(key, dsa.DSAPublicKey):
        key_type, bits = "dsa", key.key_size
    else:
        key_type, bits = type(key).__name__.lower(), 0
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = bool(bc.ca)
    except (x509.ExtensionNotFound, ValueError):
        is_ca = False
    algo = cert.signature_hash_algorithm
    return CertInfo(
        path=path,
        subject_cn=_cn(cert.subject),
        issuer_cn=_cn(cert.issuer),
        subject=cert.subject.rfc4514_string()[:1024],
        issuer=cert.issuer.rfc4514_string()[:1024],
        serial=cert.serial_number,
        not_before=_aware(cert.not_valid_before_utc),
        not_after=_aware(cert.not_valid_after_utc),
        is_ca=is_ca,
        key_type=key_type,
        key_bits=bits,
        spki_sha256=hashlib.sha256(spki).hexdigest(),
        fingerprint=hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
        sig_hash=algo.name if algo is not None else "none",
        rsa_modulus=modulus,
        obj=cert,
    )


def parse_certs(data: bytes, path: str) -> list[CertInfo]:
    try:
        if PEM_CERT in data:
            if data.count(PEM_CERT) > MAX_CERTS_PER_FILE:
                raise EvidenceError(f"more than {MAX_CERTS_PER_FILE} certificates in one file")
            certs = x509.load_pem_x509_certificates(data)
        elif data.lstrip().startswith(b"-----BEGIN"):
            raise EvidenceError("PEM file holds no CERTIFICATE block")
        else:
            certs = [x509.load_der_x509_certificate(data)]
        return [info(c, path) for c in certs]
    except EvidenceError:
        raise
    except (ValueError, TypeError) as exc:
        raise EvidenceError(f"not a PEM or DER certificate: {str(exc)[:120]}") from exc


def parse_crl(data: bytes, path: str) -> CrlInfo:
    try:
        crl = (
            x509.load_pem_x509_crl(data)
            if data.lstrip().startswith(PEM_CRL)
            else x509.load_der_x509_crl(data)
        )
        revoked = frozenset(r.serial_number for r in crl)
        nu = crl.next_update_utc
        return CrlInfo(
            path=path,
            issuer=crl.issuer.rfc4514_string()[:1024],
            last_update=_aware(crl.last_update_utc),
            next_update=_aware(nu) if nu else None,
            revoked=revoked,
            obj=crl,
        )
    except (ValueError, TypeError) as exc:
        raise EvidenceError(f"not a PEM or DER CRL: {str(exc)[:120]}") from exc


def read_certs(path: Path, root: Path) -> list[CertInfo]:
    return parse_certs(_io.read_bytes(path, _io.LIMITS["cert"]), _io.rel(root, path))


def read_crl(path: Path, root: Path) -> CrlInfo:
    return parse_crl(_io.read_bytes(path, _io.LIMITS["crl"]), _io.rel(root, path))
