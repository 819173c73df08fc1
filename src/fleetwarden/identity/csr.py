"""Reading a certificate signing request (PKCS#10, RFC 2986) for issuance.

:func:`read_csr` parses the DER with ``cryptography``, checks the proof of possession
(the CSR's signature), and returns what issuance needs: the device id, the public key
and its two identifiers (:class:`~fleetwarden.identity.ca.KeyIds`).

The CSR a device normally sends is plain: its subject is ``CN=<device id>`` and nothing
else, it has no attributes, and its key is an uncompressed P-256 (or P-384, or Ed25519)
key. For such a CSR the id and the key identifiers are read straight from the DER
``cryptography`` has just parsed and verified, instead of through ``cryptography``'s
object model: building the subject's ``Name`` objects and re-serialising the public key
were about a third of the instructions issuance ran above a bare ``cryptography`` issue
loop (benchmarks/bench_identity_instructions.py). Anything else
(other name attributes or string types, requested extensions, other key encodings)
takes the general path through ``cryptography``, which gives the same result for the
plain case; a test checks both paths agree.

What makes reading the DER directly safe: it only ever happens *after*
``cryptography`` accepted the whole structure as DER and the signature over the
CertificationRequestInfo verified, so the bytes walked here are well-formed; the walk
accepts only the exact byte patterns below (one encoding each, DER has no
alternatives) and hands anything else to the general path.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple, cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes
from cryptography.x509.oid import NameOID

from fleetwarden.identity.ca import DEVICE_URI_PREFIX, KeyIds, key_ids
from fleetwarden.identity.errors import EnrollmentRefused

#: RFC 5280 ub-common-name: a certificate's CN holds at most 64 characters
CN_MAX = 64

_SAN_OID = x509.SubjectAlternativeName.oid

#: DER of the SubjectPublicKeyInfo up to the key bits -> (length of the key bits, the
#: key type's name as ``keys.algorithm_of`` gives it), for the encodings
#: ``public_bytes(DER, SubjectPublicKeyInfo)`` produces: id-ecPublicKey with the named
#: curve and an uncompressed point (0x04 X Y), or id-Ed25519.
_SPKI_PREFIXES: dict[bytes, tuple[int, str]] = {
    # P-256: SEQ { SEQ { ecPublicKey, prime256v1 }, BIT STRING (0 unused) 04 X Y }
    bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200"): (65, "ec-p256"),
    # P-384: SEQ { SEQ { ecPublicKey, secp384r1 }, BIT STRING (0 unused) 04 X Y }
    bytes.fromhex("3076301006072a8648ce3d020106052b81040022036200"): (97, "ec-p384"),
    # Ed25519: SEQ { SEQ { id-Ed25519 }, BIT STRING (0 unused) key }
    bytes.fromhex("302a300506032b6570032100"): (32, "ed25519"),
}

#: a Name's single attribute ``SEQ { OID 2.5.4.3 (commonName), UTF8String ... }``
_CN_UTF8 = bytes.fromhex("0603550403") + b"\x0c"


class CsrFacts(NamedTuple):
    """What issuance reads from a verified CSR."""

    device_id: str
    public_key: CertificateIssuerPublicKeyTypes
    key_ids: KeyIds
    #: the key type's name when read from its canonical encoding (None: not read)
    key_type: str | None


def read_csr(der: bytes) -> CsrFacts:
    """Parse ``der``, check its signature (proof of possession) and read the device id
    and the key identifiers; :class:`EnrollmentRefused` with the reason otherwise."""
    csr = parse_csr(der)
    pub = cast(CertificateIssuerPublicKeyTypes, csr.public_key())
    plain = _plain_parts(der)
    if plain is not None:
        ids = KeyIds(
            hashlib.sha256(der[plain.spki : plain.end]).hexdigest(),
            _ski_of_bits(der[plain.bits : plain.end]),
        )
        return CsrFacts(_checked_cn(plain.cn), pub, ids, plain.kind)
    return CsrFacts(csr_device_id(csr), pub, key_ids(pub), None)


def parse_csr(der: bytes) -> x509.CertificateSigningRequest:
    """The CSR in ``der`` with its signature checked."""
    try:
        csr = x509.load_der_x509_csr(der)
    except ValueError as exc:
        raise EnrollmentRefused("the body is not a DER PKCS#10 certificate request") from exc
    try:
        ok = csr.is_signature_valid
    except (ValueError, InvalidSignature, TypeError) as exc:
        raise EnrollmentRefused(f"the CSR signature cannot be checked: {exc}") from exc
    if not ok:
        raise EnrollmentRefused("the CSR signature is invalid (proof of possession failed)")
    return csr


def csr_device_id(csr: x509.CertificateSigningRequest) -> str:
    """The device id a CSR names: its one CN; a device SAN URI, if any, must agree."""
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1:
        raise EnrollmentRefused("the CSR subject must carry exactly one CN (the device id)")
    cn = _checked_cn(str(cns[0].value))
    try:
        # a loop, not get_extension_for_class: most CSRs have no SAN, and the
        # ExtensionNotFound raised for them cost a tenth of the per-CSR overhead
        san = next((e.value for e in csr.extensions if e.oid == _SAN_OID), None)
    except ValueError as exc:
        raise EnrollmentRefused(f"the CSR extensions are malformed: {exc}") from exc
    if isinstance(san, x509.SubjectAlternativeName):
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
            if uri.startswith(DEVICE_URI_PREFIX) and uri[len(DEVICE_URI_PREFIX) :] != cn:
                raise EnrollmentRefused("the CSR's SAN URI names a different device than its CN")
    return cn


def _checked_cn(cn: str) -> str:
    if not 1 <= len(cn) <= CN_MAX:
        raise EnrollmentRefused(
            f"the CSR's CN (the device id) has {len(cn)} characters; a certificate's CN "
            f"holds 1 to {CN_MAX} (RFC 5280 ub-common-name)"
        )
    return cn


def _ski_of_bits(bits: bytes) -> x509.SubjectKeyIdentifier:
    """RFC 5280 4.2.1.2 method 1, as ``SubjectKeyIdentifier.from_public_key`` computes
    it: SHA-1 of the subjectPublicKey bits."""
    return x509.SubjectKeyIdentifier(hashlib.sha1(bits).digest())  # noqa: S324 (a key id, not a signature)


class _Plain(NamedTuple):
    """Where a plain CSR's parts are: its CN, and its SubjectPublicKeyInfo from ``spki``
    to ``end`` with the key bits from ``bits``, of key type ``kind``."""

    cn: str
    spki: int
    bits: int
    end: int
    kind: str


def _plain_parts(der: bytes) -> _Plain | None:
    """The parts of a plain CSR, None for any other. Written out flat: this runs once
    per CSR on the issuance path.

    CertificationRequest ::= SEQUENCE { certificationRequestInfo, signatureAlgorithm,
    signature }; CertificationRequestInfo ::= SEQUENCE { version INTEGER (0), subject
    Name, subjectPKInfo SubjectPublicKeyInfo, attributes [0] IMPLICIT SET OF Attribute }.
    Every length below is DER's short form (< 128) except those of the two outer
    SEQUENCEs, which may take one or two length octets."""
    if len(der) < 16 or der[0] != 0x30:
        return None
    outer = _header(der, 1)
    if outer is None or outer[0] + 2 > len(der) or der[outer[0]] != 0x30:
        return None
    cri = _header(der, outer[0] + 1)  # the CertificationRequestInfo
    if cri is None or cri[0] + 16 > len(der):
        return None
    c, cri_end = cri[0], cri[0] + cri[1]
    # version 0, then subject ::= SEQ { SET { SEQ { OID commonName, UTF8String cn } } }
    if der[c : c + 3] != b"\x02\x01\x00" or der[c + 3] != 0x30 or der[c + 5] != 0x31:
        return None
    name_len, rdn_len, atv_len = der[c + 4], der[c + 6], der[c + 8]
    if (
        name_len >= 0x80
        or rdn_len != name_len - 2
        or der[c + 7] != 0x30
        or atv_len != rdn_len - 2
        or der[c + 9 : c + 15] != _CN_UTF8
        or der[c + 15] != atv_len - 7
    ):
        return None
    spki = c + 5 + name_len  # the subject's end
    try:
        cn = der[c + 16 : spki].decode("utf-8")
    except UnicodeDecodeError:
        return None
    # key: one of the canonical encodings above; then no attributes, and the end
    for prefix, (size, kind) in _SPKI_PREFIXES.items():
        if der.startswith(prefix, spki):
            bits = spki + len(prefix)
            end = bits + size
            if der[end : end + 2] == b"\xa0\x00" and end + 2 == cri_end:
                return _Plain(cn, spki, bits, end, kind)
            return None
    return None


def _header(der: bytes, pos: int) -> tuple[int, int] | None:
    """(where the content starts, its length) for the length octets at ``pos``: the
    short form or one or two octets; None for anything else."""
    if pos >= len(der):
        return None
    n = der[pos]
    if n < 0x80:
        return pos + 1, n
    if n == 0x81 and pos + 1 < len(der):
        return pos + 2, der[pos + 1]
    if n == 0x82 and pos + 2 < len(der):
        return pos + 3, int.from_bytes(der[pos + 1 : pos + 3], "big")
    return None
