"""The fleet CA without a server: profiles, key policy, CRL, key files, the re-signing
path used by token backends, root export."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetwarden.errors import ConflictError
from fleetwarden.identity.ca import (
    CaPaths,
    FleetCA,
    check_public_key,
    device_id_of,
    export_root,
    init_ca,
    key_ids,
    public_key_fingerprint,
    time_ordered_serial,
)
from fleetwarden.identity.config import IdentitySettings
from fleetwarden.identity.errors import EnrollmentRefused, KeyBackendError
from fleetwarden.identity.keys import SoftwareKey, sign_certificate, sign_crl, sign_csr


@pytest.fixture
def ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FleetCA:
    monkeypatch.delenv("FLEETWARDEN_CA_PASSPHRASE", raising=False)
    return init_ca(tmp_path, IdentitySettings(crl_public_url="http://crl.example:8080"))


def test_device_profile(ca: FleetCA) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = ca.issue_device("dev-7", key.public_key())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-7"
    assert device_id_of(cert) == "dev-7"
    ext = cert.extensions
    assert ext.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
    ski = ext.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert (
        aki.key_identifier
        == ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    )
    dp = ext.get_extension_for_class(x509.CRLDistributionPoints).value
    assert dp[0].full_name[0].value == "http://crl.example:8080/crl/issuing.crl"
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert timedelta(days=30) <= life <= timedelta(days=30, minutes=6)
    cert.verify_directly_issued_by(ca.cert)


def test_lifetime_never_beyond_the_ca(ca: FleetCA) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = ca.issue_device("dev-8", key.public_key(), lifetime=timedelta(days=365 * 50))
    assert cert.not_valid_after_utc == ca.cert.not_valid_after_utc


def test_server_profile(ca: FleetCA) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = ca.issue_server(key.public_key(), ["broker.local", "127.0.0.1"])
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.local"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    with pytest.raises(EnrollmentRefused):
        ca.issue_server(key.public_key(), [])


@pytest.mark.parametrize(
    ("key", "allowed", "ok"),
    [
        (lambda: ec.generate_private_key(ec.SECP256R1()), ["ec-p256"], True),
        (lambda: ec.generate_private_key(ec.SECP384R1()), ["ec-p256"], False),
        (lambda: ec.generate_private_key(ec.SECP384R1()), ["ec-p256", "ec-p384"], True),
        (lambda: ed25519.Ed25519PrivateKey.generate(), ["ed25519"], True),
        (lambda: ed25519.Ed25519PrivateKey.generate(), ["ec-p256"], False),
        (lambda: rsa.generate_private_key(65537, 1024), ["rsa"], False),
        (lambda: rsa.generate_private_key(65537, 2048), ["rsa"], True),
        (lambda: dsa.generate_private_key(2048), ["ec-p256", "rsa"], False),
        (lambda: ec.generate_private_key(ec.SECP256K1()), ["ec-p256"], False),
    ],
)
def test_key_policy(key, allowed, ok) -> None:
    s = IdentitySettings(allowed_key_types=allowed)
    pub = key().public_key()
    if ok:
        check_public_key(pub, s)
    else:
        with pytest.raises(EnrollmentRefused):
            check_public_key(pub, s)


def test_settings_refuse_unknown_key_types() -> None:
    with pytest.raises(ValueError):
        IdentitySettings(allowed_key_types=["dsa"])


def test_crl_has_idp_reasons_and_entries(ca: FleetCA) -> None:
    now = datetime.now(UTC)
    crl = ca.build_crl([(11, now, "key_compromise"), (12, now, None)])
    assert crl.is_signature_valid(ca.cert.public_key())
    idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
    assert idp.critical and idp.value.full_name[0].value == ca.crl_url
    assert idp.value.only_contains_user_certs
    e = crl.get_revoked_certificate_by_serial_number(11)
    assert (
        e is not None
        and e.extensions.get_extension_for_class(x509.CRLReason).value.reason
        == x509.ReasonFlags.key_compromise
    )
    assert crl.get_revoked_certificate_by_serial_number(12) is not None
    assert crl.next_update_utc > now + timedelta(hours=23)
    later = ca.build_crl([])
    n1 = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    n2 = later.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert n2 > n1


def test_key_files_are_encrypted_0600(ca: FleetCA, tmp_path: Path) -> None:
    paths = CaPaths.of(tmp_path)
    for f in (paths.root_key, paths.issuing_key, paths.passphrase):
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in paths.issuing_key.read_bytes()
    with pytest.raises(KeyBackendError):
        SoftwareKey.load(paths.issuing_key, b"wrong")
    with pytest.raises(KeyBackendError):
        SoftwareKey.load(paths.issuing_key, None)


def test_passphrase_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETWARDEN_CA_PASSPHRASE", "correct horse")
    init_ca(tmp_path, IdentitySettings())
    assert not CaPaths.of(tmp_path).passphrase.exists()
    FleetCA.load(tmp_path, IdentitySettings())
    monkeypatch.setenv("FLEETWARDEN_CA_PASSPHRASE", "battery staple")
    with pytest.raises(KeyBackendError):
        FleetCA.load(tmp_path, IdentitySettings())


def test_init_twice_refused(ca: FleetCA, tmp_path: Path) -> None:
    with pytest.raises(ConflictError):
        init_ca(tmp_path, IdentitySettings())


def test_root_export_and_offline(ca: FleetCA, tmp_path: Path) -> None:
    out = tmp_path / "usb"
    export_root(tmp_path, IdentitySettings(), out, remove=True)
    paths = CaPaths.of(tmp_path)
    assert not paths.root_key.exists() and (out / "root.key").exists()
    assert stat.S_IMODE(os.stat(out / "root.key").st_mode) == 0o600
    # the issuing CA keeps working without the root
    again = FleetCA.load(tmp_path, IdentitySettings())
    again.issue_device("d", ec.generate_private_key(ec.SECP256R1()).public_key())
    with pytest.raises(KeyBackendError):
        export_root(tmp_path, IdentitySettings(), out, remove=True)


class Opaque:
    """A backend that is not a SoftwareKey: exercises the TBS re-signing path that
    PKCS#11 keys take (the key itself is in memory here; see the SoftHSM2 test)."""

    def __init__(self, algorithm: str) -> None:
        self._k = SoftwareKey.generate(algorithm)
        self.algorithm = algorithm

    def public_key(self):
        return self._k.public_key()

    def sign(self, data: bytes) -> bytes:
        return self._k.sign(data)


@pytest.mark.parametrize("algorithm", ["ec-p256", "ec-p384", "ed25519"])
def test_resigning_path(algorithm: str) -> None:
    backend = Opaque(algorithm)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    now = datetime.now(UTC)
    cert = sign_certificate(
        x509.CertificateBuilder()
        .issuer_name(name)
        .subject_name(name)
        .public_key(backend.public_key())
        .serial_number(5)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1)),
        backend,
    )
    cert.verify_directly_issued_by(cert)
    crl = sign_crl(
        x509.CertificateRevocationListBuilder()
        .issuer_name(name)
        .last_update(now)
        .next_update(now + timedelta(days=1)),
        backend,
    )
    assert crl.is_signature_valid(backend.public_key())
    csr = sign_csr(x509.CertificateSigningRequestBuilder().subject_name(name), backend)
    assert csr.is_signature_valid and csr.public_key() == backend.public_key()
    if algorithm == "ec-p384":
        assert isinstance(cert.signature_hash_algorithm, hashes.SHA384)


def test_root_crl_and_bundle(ca: FleetCA) -> None:
    """The root's CRL (ARL) exists from the start, is signed by the root, never outlives
    it, and sits in the bundle with the issuing CA's CRL."""
    paths = ca.paths
    arl = x509.load_der_x509_crl(paths.root_crl.read_bytes())
    assert arl.issuer == ca.root.subject
    assert arl.is_signature_valid(ca.root.public_key())  # type: ignore[arg-type]
    assert list(arl) == []
    idp = arl.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
    assert idp.only_contains_ca_certs and idp.full_name is None
    assert arl.next_update_utc is not None
    assert arl.next_update_utc <= ca.root.not_valid_after_utc
    assert paths.crl_bundle.read_bytes() == ca.crl_pem_file.read_bytes() + (
        paths.root_crl_pem.read_bytes()
    )
    assert x509.load_pem_x509_certificates(paths.chain.read_bytes()) == [ca.cert, ca.root]


def test_generation_state_file_is_validated(ca: FleetCA, tmp_path: Path) -> None:
    paths = ca.paths
    assert paths.generation() == 1 and ca.crl_name == "issuing"
    for bad in (
        '{"generation": 0}',
        '{"generation": "2"}',
        "[1]",
        "not json",
        '{"generation": true}',
    ):
        paths.state.write_text(bad)
        with pytest.raises(KeyBackendError, match="ca-state.json"):
            paths.generation()
    paths.state.unlink()
    s = IdentitySettings(crl_public_url="http://crl.example:8080/")
    assert s.crl_url() == "http://crl.example:8080/crl/issuing.crl"
    assert s.crl_url("issuing-3") == "http://crl.example:8080/crl/issuing-3.crl"
    # only well-formed retired file names count
    paths.retired_dir.mkdir()
    for name in ("issuing-2.crt", "issuing-x.crt", "issuing-02.crt", "other.crt"):
        (paths.retired_dir / name).write_text("")
    assert paths.retired_generations() == [2]


def test_intermediate_never_outlives_the_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLEETWARDEN_CA_PASSPHRASE", raising=False)
    ca = init_ca(tmp_path, IdentitySettings(root_lifetime_days=40, issuing_lifetime_days=400))
    assert ca.cert.not_valid_after_utc <= ca.root.not_valid_after_utc  # clamped at init
    from fleetwarden.identity.ca import RootExpiringError, rollover_issuing

    with pytest.raises(RootExpiringError):
        rollover_issuing(ca)
    assert not ca.paths.state.exists()


@pytest.mark.parametrize(
    "key",
    [
        ec.generate_private_key(ec.SECP256R1()).public_key(),
        ec.generate_private_key(ec.SECP384R1()).public_key(),
        ec.generate_private_key(ec.SECP521R1()).public_key(),
        ed25519.Ed25519PrivateKey.generate().public_key(),
        rsa.generate_private_key(65537, 2048).public_key(),
    ],
    ids=["p256", "p384", "p521", "ed25519", "rsa2048"],
)
def test_key_ids_match_the_library(key: object) -> None:
    ids = key_ids(key)  # type: ignore[arg-type]
    assert ids.fingerprint == public_key_fingerprint(key)
    assert ids.ski == x509.SubjectKeyIdentifier.from_public_key(key)  # type: ignore[arg-type]


def test_device_certificate_carries_the_given_key_id(ca: FleetCA) -> None:
    pub = ec.generate_private_key(ec.SECP256R1()).public_key()
    cert = ca.issue_device("dev-9", pub, ski=key_ids(pub).ski)
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(pub)


def test_serials_are_positive_fixed_length_random_and_in_issue_order(ca: FleetCA) -> None:
    serials = [time_ordered_serial(1_800_000_000.0 + i / 1000) for i in range(200)]
    assert all(s.bit_length() == 159 for s in serials)  # positive, 20 octets at most
    assert serials == sorted(serials)  # one per millisecond: in issue order
    hexes = [format(s, "x") for s in serials]
    assert all(len(h) == 40 for h in hexes) and hexes == sorted(hexes)
    # the same millisecond: still distinct, the low 110 bits are random
    same = {time_ordered_serial(1_800_000_000.0) for _ in range(1000)}
    assert len(same) == 1000
    low = [s & ((1 << 110) - 1) for s in same]
    assert max(low).bit_length() >= 105  # not a counter
    # issued certificates use them
    cert = ca.issue_device("dev-10", ec.generate_private_key(ec.SECP256R1()).public_key())
    assert cert.serial_number.bit_length() == 159
    assert (
        abs((cert.serial_number >> 110) - (1 << 48) - int(datetime.now(UTC).timestamp() * 1000))
        < 60_000
    )
