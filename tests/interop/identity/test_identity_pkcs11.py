"""SoftHSM2 through python-pkcs11: keys generated on the token, never extractable;
a device CSR signed by the token enrols over EST; a CA whose keys live on the token
issues certificates openssl accepts."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from fleetwarden.identity.ca import CaPaths, init_ca
from fleetwarden.identity.config import IdentitySettings
from fleetwarden.identity.keys import Pkcs11Key, reset_pkcs11, sign_csr

pytestmark = [pytest.mark.interop]

MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")
PIN = "4321"


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory):
    if not MODULE.exists():
        pytest.fail("SoftHSM2 is not installed (apt: softhsm2)")
    d = tmp_path_factory.mktemp("softhsm")
    (d / "tokens").mkdir()
    conf = d / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {d / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            "fleetwarden",
            "--pin",
            PIN,
            "--so-pin",
            "87654321",
        ],
        check=True,
        capture_output=True,
    )
    os.environ["FLEETWARDEN_PKCS11_PIN"] = PIN
    # Another test in this process may have initialised SoftHSM2 with its own config.
    reset_pkcs11(MODULE)
    yield "fleetwarden"
    os.environ.pop("FLEETWARDEN_PKCS11_PIN", None)
    # SOFTHSM2_CONF stays: the library is initialised once per process with it.


def test_device_key_never_leaves_the_token(fleet, token) -> None:
    import pkcs11

    key = Pkcs11Key.generate(MODULE, token, PIN.encode(), "device-hsm-1", "ec-p256")
    try:
        assert key.attribute("SENSITIVE") is True
        assert key.attribute("EXTRACTABLE") is False
        with pytest.raises(pkcs11.PKCS11Error):
            key.attribute("VALUE")  # the token refuses to reveal the private value
        csr = sign_csr(
            x509.CertificateSigningRequestBuilder().subject_name(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hsm-1")])
            ),
            key,
        )
        assert csr.is_signature_valid
        fleet.add_device("hsm-1")
        r = httpx.post(
            f"{fleet.base}/.well-known/est/simpleenroll",
            content=base64.b64encode(csr.public_bytes(serialization.Encoding.DER)),
            headers={"Content-Type": "application/pkcs10"},
            auth=("hsm-1", fleet.token("hsm-1")),
            verify=fleet.tls(),
        )
        assert r.status_code == 200, r.text
        cert = pkcs7.load_der_pkcs7_certificates(base64.b64decode(r.content))[0]
        assert cert.public_key() == key.public_key()
    finally:
        key.close()


def test_ca_keys_on_the_token(token, tmp_path: Path) -> None:
    s = IdentitySettings(
        key_backend="pkcs11", pkcs11_module=MODULE, pkcs11_token_label=token, ca_name="hsmca"
    )
    ca = init_ca(tmp_path, s)
    paths = CaPaths.of(tmp_path)
    assert not paths.issuing_key.exists() and not paths.root_key.exists()
    from cryptography.hazmat.primitives.asymmetric import ec

    dkey = ec.generate_private_key(ec.SECP256R1())
    cert = ca.issue_device("hsm-dev-9", dkey.public_key())
    cert.verify_directly_issued_by(ca.cert)
    ca.cert.verify_directly_issued_by(ca.root)
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
    assert (
        cert.signature_hash_algorithm is not None
        and cert.signature_hash_algorithm.name == hashes.SHA256().name
    )
    assert ca.key.attribute("EXTRACTABLE") is False  # type: ignore[attr-defined]


def test_rollover_with_keys_on_the_token(token, tmp_path: Path, registry) -> None:
    """Issuing-CA rollover with the pkcs11 backend: the root key on the token signs the
    new issuing CA, whose key is generated on the token under a new label; the retired
    CA's key (old label) keeps signing its CRL; openssl accepts both chains."""
    import secrets

    from fleetwarden.identity.ca import FleetCA, RootUnavailableError
    from fleetwarden.identity.service import IdentityService
    from fleetwarden.registry import Actor

    name = f"roll{secrets.token_hex(4)}"  # one token for the module: labels must differ
    s = IdentitySettings(
        key_backend="pkcs11", pkcs11_module=MODULE, pkcs11_token_label=token, ca_name=name
    )
    ca = init_ca(tmp_path, s)
    svc = IdentityService(registry, ca)
    actor = Actor("test")
    from cryptography.hazmat.primitives.asymmetric import ec

    old_leaf = ca.issue_device("d-old", ec.generate_private_key(ec.SECP256R1()).public_key())
    svc.record_server_certificate(old_leaf, actor)  # recorded: keeps the old CA trusted
    with pytest.raises(RootUnavailableError, match="file key backend"):
        svc.rollover(actor, root_dir=tmp_path)
    summary = svc.rollover(actor)
    assert summary["generation"] == 2
    new = svc.ca
    assert new.key.attribute("EXTRACTABLE") is False  # type: ignore[attr-defined]
    assert new.key.attribute("LABEL") == f"{name}-issuing-2"  # type: ignore[attr-defined]
    assert [c.generation for c in new.issuers] == [2, 1]
    new_leaf = new.issue_device("d-new", ec.generate_private_key(ec.SECP256R1()).public_key())
    new_leaf.verify_directly_issued_by(new.cert)
    # a fresh load finds both keys on the token by their labels
    again = FleetCA.load(tmp_path, s)
    assert again.generation == 2
    svc2 = IdentityService(registry, again)
    svc2.regenerate_crl()
    old_crl = x509.load_der_x509_crl(again.retired[0].crl_file.read_bytes())
    assert old_crl.is_signature_valid(again.retired[0].cert.public_key())  # type: ignore[arg-type]
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
