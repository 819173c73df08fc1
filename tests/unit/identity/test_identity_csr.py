"""Reading CSRs for issuance: the plain CSR's direct read agrees with ``cryptography``.

``read_csr`` reads the device id, key identifiers and key type of a plain CSR straight
from its DER; every other CSR goes through ``cryptography``'s object model. These tests
check that both give the same answer, that only exactly-plain CSRs take the direct read,
and that the direct read never raises on malformed bytes nor disagrees with
``cryptography`` about bytes ``cryptography`` accepts.
"""

from __future__ import annotations

import random

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from fleetwarden.identity import csr as csr_module
from fleetwarden.identity.ca import DEVICE_URI_PREFIX, check_public_key, key_ids
from fleetwarden.identity.config import IdentitySettings
from fleetwarden.identity.csr import CN_MAX, CsrFacts, csr_device_id, parse_csr, read_csr
from fleetwarden.identity.errors import EnrollmentRefused
from fleetwarden.identity.keys import algorithm_of


def build(
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey,
    name: x509.Name,
    *extensions: x509.ExtensionType,
) -> bytes:
    b = x509.CertificateSigningRequestBuilder().subject_name(name)
    for ext in extensions:
        b = b.add_extension(ext, critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return b.sign(key, algorithm).public_bytes(serialization.Encoding.DER)


def cn(value: str, **kw: _ASN1Type) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, value, **kw)])  # type: ignore[arg-type]


def general(der: bytes) -> CsrFacts:
    """What the general path (``cryptography``'s objects) reads from ``der``."""
    c = parse_csr(der)
    pub = c.public_key()
    return CsrFacts(csr_device_id(c), pub, key_ids(pub), None)  # type: ignore[arg-type]


def same(a: CsrFacts, b: CsrFacts) -> bool:
    return (a.device_id, a.key_ids, a.public_key) == (b.device_id, b.key_ids, b.public_key)


KEYS = {
    "ec-p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ec-p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "ed25519": ed25519.Ed25519PrivateKey.generate,
}


@pytest.mark.parametrize("kind", sorted(KEYS))
@pytest.mark.parametrize("device_id", ["d", "meter-0001", "ü-ñ:ök", "x" * CN_MAX])
def test_a_plain_csr_is_read_directly_and_agrees_with_cryptography(
    kind: str, device_id: str
) -> None:
    key = KEYS[kind]()
    der = build(key, cn(device_id))
    assert csr_module._plain_parts(der) is not None
    facts = read_csr(der)
    assert same(facts, general(der))
    assert facts.device_id == device_id
    assert facts.key_type == kind == algorithm_of(key.public_key())


def other_csrs() -> dict[str, bytes]:
    p256 = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    org_cn = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "acme"),
            x509.NameAttribute(NameOID.COMMON_NAME, "d1"),
        ]
    )
    multi_valued = x509.Name(
        [
            x509.RelativeDistinguishedName(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, "d1"),
                    x509.NameAttribute(NameOID.SERIAL_NUMBER, "42"),
                ]
            )
        ]
    )
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(DEVICE_URI_PREFIX + "d1")])
    return {
        "rsa key": build(rsa_key, cn("d1")),
        "PrintableString CN": build(p256, cn("d1", _type=_ASN1Type.PrintableString)),
        "O and CN": build(p256, org_cn),
        "multi-valued RDN": build(p256, multi_valued),
        "requested extensions": build(p256, cn("d1"), san),
    }


@pytest.mark.parametrize("case", sorted(other_csrs()))
def test_any_other_csr_takes_the_general_path_with_the_same_answer(case: str) -> None:
    der = other_csrs()[case]
    assert csr_module._plain_parts(der) is None
    facts = read_csr(der)
    assert facts.key_type is None  # the key type is then decided by check_public_key
    assert same(facts, general(der)) and facts.device_id == "d1"


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    if n < 0x100:
        return bytes([tag, 0x81, n]) + content
    return bytes([tag, 0x82]) + n.to_bytes(2, "big") + content


def compressed_point_csr(key: ec.EllipticCurvePrivateKey, device_id: str) -> bytes:
    """A valid CSR whose SubjectPublicKeyInfo holds the P-256 point compressed (which
    ``cryptography`` never writes, but loads)."""
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    ec_p256 = bytes.fromhex("301306072a8648ce3d020106082a8648ce3d030107")
    spki = _der(0x30, ec_p256 + _der(0x03, b"\0" + point))
    tbs = _der(0x30, bytes.fromhex("020100") + cn(device_id).public_bytes() + spki + b"\xa0\x00")
    signature = key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    ecdsa_with_sha256 = bytes.fromhex("300a06082a8648ce3d040302")
    return _der(0x30, tbs + ecdsa_with_sha256 + _der(0x03, b"\0" + signature))


def test_a_compressed_point_takes_the_general_path_and_the_same_fingerprint() -> None:
    """The key's fingerprint must be that of its canonical (uncompressed) form whatever
    the CSR's encoding, or one key could pass the shared-key check (M1) twice."""
    key = ec.generate_private_key(ec.SECP256R1())
    der = compressed_point_csr(key, "d1")
    assert x509.load_der_x509_csr(der).is_signature_valid
    assert csr_module._plain_parts(der) is None
    facts = read_csr(der)
    assert same(facts, general(der)) and facts.key_type is None
    assert facts.key_ids == read_csr(build(key, cn("d1"))).key_ids


@pytest.mark.parametrize("length", [CN_MAX + 1, 128])
def test_a_cn_longer_than_x509_allows_is_refused_on_both_paths(length: int) -> None:
    """A device id may be up to 128 characters in the registry, a CN only 64: such a
    CSR is refused with the reason, instead of failing when the certificate is built."""
    key = ec.generate_private_key(ec.SECP256R1())
    long_id = "d" * length
    plain = build(key, cn(long_id, _validate=False))  # type: ignore[arg-type]
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(DEVICE_URI_PREFIX + "x")])
    extended = build(key, cn(long_id, _validate=False), san)  # type: ignore[arg-type]
    # a subject of up to 116 characters has short (one-octet) lengths: the direct read
    assert (csr_module._plain_parts(plain) is not None) == (length <= 116)
    assert csr_module._plain_parts(extended) is None
    for der in (plain, extended):
        with pytest.raises(EnrollmentRefused, match="RFC 5280 ub-common-name"):
            read_csr(der)


def test_an_empty_cn_is_refused() -> None:
    der = build(ec.generate_private_key(ec.SECP256R1()), cn("", _validate=False))  # type: ignore[arg-type]
    with pytest.raises(EnrollmentRefused, match="has 0 characters"):
        read_csr(der)


def test_a_known_key_type_is_still_checked_against_the_policy() -> None:
    only_p256 = IdentitySettings(allowed_key_types=["ec-p256"])
    facts = read_csr(build(ec.generate_private_key(ec.SECP384R1()), cn("d1")))
    assert facts.key_type == "ec-p384"
    with pytest.raises(EnrollmentRefused, match="ec-p384 not allowed"):
        check_public_key(facts.public_key, only_p256, kind=facts.key_type)
    both = IdentitySettings(allowed_key_types=["ec-p256", "ec-p384"])
    assert check_public_key(facts.public_key, both, kind=facts.key_type) == "ec-p384"


def test_the_direct_read_never_raises_and_never_disagrees_on_mangled_bytes() -> None:
    """Every truncation and thousands of byte mutations of plain CSRs: the direct read
    returns None or a result, never an exception; and whenever it returns one for bytes
    ``cryptography`` still loads, the CN and key it reports are ``cryptography``'s."""
    rng = random.Random(7)
    samples = [build(KEYS[k](), cn(f"dev-{k}")) for k in sorted(KEYS)]
    mangled: list[bytes] = []
    for der in samples:
        mangled += [der[:n] for n in range(len(der))]
        for _ in range(1500):
            b = bytearray(der)
            for _ in range(rng.choice((1, 1, 2, 3))):
                b[rng.randrange(len(b))] = rng.randrange(256)
            mangled.append(bytes(b))
    mangled += [rng.randbytes(rng.randrange(200)) for _ in range(500)]
    agreed = 0
    for der in mangled:
        parts = csr_module._plain_parts(der)
        if parts is None:
            continue
        try:
            c = x509.load_der_x509_csr(der)
            pub = c.public_key()
            (cn_attr,) = c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        except ValueError:
            continue  # cryptography refuses it: read_csr would never get this far
        text, spki, _, end, kind = parts
        assert text == cn_attr.value and len(c.subject) == 1
        assert der[spki:end] == pub.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert kind == algorithm_of(pub)
        assert not list(c.extensions) and not list(c.attributes)
        agreed += 1
    assert agreed > 100  # mutations of the signature and the unused parts still load
