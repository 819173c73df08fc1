"""TPM 2.0 through tpm2-pytss against swtpm: a device key created inside the TPM signs
its CSR there and enrols over EST; a CA whose keys live in the TPM issues certificates
openssl accepts; the key is re-derived (same public key) by a new process context."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID
from identity_support import swtpm

from fleetwarden.identity.ca import CaPaths, init_ca
from fleetwarden.identity.config import IdentitySettings
from fleetwarden.identity.keys import TpmKey, sign_csr

pytestmark = [pytest.mark.interop]


@pytest.fixture(scope="module")
def tcti(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with swtpm(tmp_path_factory.mktemp("swtpm")) as t:
        yield t


def test_device_key_in_the_tpm_enrolls(fleet, tcti) -> None:
    key = TpmKey(tcti, "device:tpm-1:1")
    try:
        csr = sign_csr(
            x509.CertificateSigningRequestBuilder().subject_name(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tpm-1")])
            ),
            key,
        )
        assert csr.is_signature_valid and csr.public_key() == key.public_key()
        fleet.add_device("tpm-1")
        r = httpx.post(
            f"{fleet.base}/.well-known/est/simpleenroll",
            content=base64.b64encode(csr.public_bytes(serialization.Encoding.DER)),
            headers={"Content-Type": "application/pkcs10"},
            auth=("tpm-1", fleet.token("tpm-1")),
            verify=fleet.tls(),
        )
        assert r.status_code == 200, r.text
        cert = pkcs7.load_der_pkcs7_certificates(base64.b64decode(r.content))[0]
        assert cert.public_key() == key.public_key()
        pub = key.public_key()
    finally:
        key.close()
    # a new context derives the same key from the same label; another label differs
    again = TpmKey(tcti, "device:tpm-1:1")
    other = TpmKey(tcti, "device:tpm-1:2")
    try:
        assert again.public_key() == pub
        assert other.public_key() != pub
    finally:
        again.close()
        other.close()


def test_ca_keys_in_the_tpm(tcti, tmp_path: Path) -> None:
    s = IdentitySettings(key_backend="tpm", tpm_tcti=tcti, ca_name="tpmca")
    ca = init_ca(tmp_path, s)
    paths = CaPaths.of(tmp_path)
    assert not paths.issuing_key.exists() and not paths.root_key.exists()
    cert = ca.issue_device("tpm-dev-9", ec.generate_private_key(ec.SECP256R1()).public_key())
    (tmp_path / "leaf.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    p = subprocess.run(
        [
            "openssl",
            "verify",
            "-crl_check",
            "-CAfile",
            str(paths.root_cert),
            "-untrusted",
            str(paths.issuing_cert),
            "-CRLfile",
            str(paths.crl_pem),
            str(tmp_path / "leaf.pem"),
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    ca.key.close()  # type: ignore[attr-defined]


def test_rollover_with_keys_in_the_tpm(tcti, tmp_path: Path, registry) -> None:
    """Issuing-CA rollover with the tpm backend: the root (in the TPM) signs a new
    issuing CA whose key is derived under a new label; after a reload both issuing keys
    are found again and both chains verify with -crl_check_all."""
    from fleetwarden.identity.ca import FleetCA
    from fleetwarden.identity.service import IdentityService
    from fleetwarden.registry import Actor

    s = IdentitySettings(key_backend="tpm", tpm_tcti=tcti, ca_name=f"tpmroll{id(registry)}")
    ca = init_ca(tmp_path, s)
    actor = Actor("test")
    svc = IdentityService(registry, ca)
    old_leaf = ca.issue_device("t-old", ec.generate_private_key(ec.SECP256R1()).public_key())
    svc.record_server_certificate(old_leaf, actor)
    svc.rollover(actor)
    new_leaf = svc.ca.issue_device("t-new", ec.generate_private_key(ec.SECP256R1()).public_key())
    assert svc.ca.key.public_key() != ca.key.public_key()
    for c in (ca, svc.ca):
        c.key.close()  # type: ignore[attr-defined]
    again = FleetCA.load(tmp_path, s)
    try:
        assert [c.generation for c in again.issuers] == [2, 1]
        IdentityService(registry, again).regenerate_crl()
        paths = CaPaths.of(tmp_path)
        for name, leaf in (("old", old_leaf), ("new", new_leaf)):
            (tmp_path / f"{name}.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
            p = subprocess.run(
                [
                    "openssl",
                    "verify",
                    "-crl_check_all",
                    *("-CAfile", str(paths.root_cert), "-untrusted", str(paths.chain)),
                    *("-CRLfile", str(paths.crl_bundle), str(tmp_path / f"{name}.pem")),
                ],
                capture_output=True,
                text=True,
            )
            assert p.returncode == 0, p.stdout + p.stderr
    finally:
        for c in again.issuers:
            c.key.close()  # type: ignore[attr-defined]
