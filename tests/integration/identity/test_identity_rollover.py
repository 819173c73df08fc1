"""Issuing-CA rollover on the real registry (SQLite and PostgreSQL), checked with real
``openssl verify -crl_check_all``: the new issuing CA issues, the old one is retired
but still trusted and still publishes its CRL, revocations of both reach the CRL
bundle, and every refusal leaves the CA as it was."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from fleetwarden.gateway.policy import canonical_serial, crl_serials
from fleetwarden.identity.ca import (
    CaPaths,
    FleetCA,
    RootExpiringError,
    RootUnavailableError,
    export_root,
    init_ca,
)
from fleetwarden.identity.config import IdentitySettings
from fleetwarden.identity.errors import EnrollmentAuthError
from fleetwarden.identity.service import CertAuth, IdentityService, Issued, TokenAuth, rollover_of
from fleetwarden.registry import Actor
from fleetwarden.registry.models import OutboxEvent
from fleetwarden.registry.schemas import DeviceCreate


def csr(device_id: str) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    c = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    return key, c.public_bytes(serialization.Encoding.DER)


ACTOR = Actor("test")
OPENSSL = shutil.which("openssl")


@pytest.fixture(autouse=True)
def _no_env_passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEETWARDEN_CA_PASSPHRASE", raising=False)


def _svc(registry, data: Path, settings: IdentitySettings | None = None) -> IdentityService:
    ca = init_ca(data, settings or IdentitySettings())
    for d in ("old-a", "old-b", "new-c", "new-d"):
        registry.add_device(DeviceCreate(id=d), ACTOR)
    return IdentityService(registry, ca)


def _enroll(svc: IdentityService, device: str) -> tuple[ec.EllipticCurvePrivateKey, Issued]:
    key, der = csr(device)
    out = svc.enroll(der, TokenAuth(device, svc.create_token(device, ACTOR)))
    assert isinstance(out, Issued)
    return key, out  # type: ignore[return-value]


def _pem(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _verify(paths: CaPaths, cert: Path) -> subprocess.CompletedProcess[str]:
    assert OPENSSL is not None
    return subprocess.run(
        [
            OPENSSL,
            "verify",
            "-crl_check_all",
            "-CAfile",
            str(paths.root_cert),
            "-untrusted",
            str(paths.chain),
            "-CRLfile",
            str(paths.crl_bundle),
            str(cert),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.skipif(OPENSSL is None, reason="needs the openssl command line tool")
def test_rollover_both_issuing_cas_verify_and_revoke(registry, tmp_path: Path) -> None:
    data = tmp_path / "data"
    svc = _svc(registry, data)
    paths = svc.ca.paths
    old_ca = svc.ca
    _, a_old = _enroll(svc, "old-a")
    b_key, b_old = _enroll(svc, "old-b")

    summary = svc.rollover(ACTOR)

    new_ca = svc.ca
    assert summary["generation"] == 2 and new_ca.generation == 2
    assert summary["retired"]["generation"] == 1
    assert new_ca.cert.subject != old_ca.cert.subject
    assert new_ca.key_id != old_ca.key_id
    assert new_ca.cert.issuer == old_ca.root.subject
    new_ca.cert.verify_directly_issued_by(new_ca.root)
    assert new_ca.cert.not_valid_after_utc <= new_ca.root.not_valid_after_utc
    assert new_ca.crl_url.endswith("/crl/issuing-2.crl") and old_ca.crl_url.endswith(
        "/crl/issuing.crl"
    )
    # the old one is kept until its last certificate expires
    assert summary["retired"]["trusted_until"] == b_old.cert.not_valid_after_utc.isoformat()
    assert [c.subject for c in x509.load_pem_x509_certificates(paths.chain.read_bytes())] == [
        new_ca.cert.subject,
        old_ca.cert.subject,
        old_ca.root.subject,
    ]
    assert json.loads(paths.state.read_text()) == {"generation": 2}
    assert (paths.retired_key(1).stat().st_mode & 0o777) == 0o600
    assert paths.issuing_cert.read_bytes() == new_ca.cert.public_bytes(serialization.Encoding.PEM)

    # New certificates (token enrolment, and re-enrolment with the OLD issuer's cert)
    # come from the new issuing CA.
    _, c_new = _enroll(svc, "new-c")
    _, d_new = _enroll(svc, "new-d")
    c_new.cert.verify_directly_issued_by(new_ca.cert)
    assert c_new.cert.issuer == new_ca.cert.subject
    dp = c_new.cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert dp[0].full_name[0].value == new_ca.crl_url
    _, der = csr("old-b")
    b_new = svc.enroll(der, CertAuth(b_old.cert), reenroll=True)
    assert isinstance(b_new, Issued) and b_new.cert.issuer == new_ca.cert.subject
    assert svc.device_of(a_old.cert) == "old-a"  # old-issuer certs still authenticate
    assert svc.device_of(c_new.cert) == "new-c"

    svc.revoke("old-a", "key_compromise", ACTOR)
    svc.revoke("new-c", "key_compromise", ACTOR)
    svc.regenerate_crl()

    old_crl = x509.load_der_x509_crl(old_ca.crl_file.read_bytes())
    new_crl = x509.load_der_x509_crl(new_ca.crl_file.read_bytes())
    assert old_crl.is_signature_valid(old_ca.cert.public_key())  # type: ignore[arg-type]
    assert new_crl.is_signature_valid(new_ca.cert.public_key())  # type: ignore[arg-type]
    assert old_crl.issuer == old_ca.cert.subject and new_crl.issuer == new_ca.cert.subject
    assert {r.serial_number for r in old_crl} == {a_old.cert.serial_number}
    assert {r.serial_number for r in new_crl} == {c_new.cert.serial_number}
    # the gateway reads the bundle: both revocations reach the broker
    assert crl_serials(paths.crl_bundle) == {
        canonical_serial(a_old.cert.serial_number),
        canonical_serial(c_new.cert.serial_number),
    }

    t = tmp_path / "v"
    t.mkdir()
    verdicts = {
        name: _verify(paths, _pem(t / f"{name}.pem", cert))
        for name, cert in {
            "a_old": a_old.cert,
            "b_old": b_old.cert,
            "b_new": b_new.cert,
            "c_new": c_new.cert,
            "d_new": d_new.cert,
        }.items()
    }
    for ok in ("b_old", "b_new", "d_new"):
        assert verdicts[ok].returncode == 0, verdicts[ok].stdout + verdicts[ok].stderr
    for revoked in ("a_old", "c_new"):
        out = verdicts[revoked].stdout + verdicts[revoked].stderr
        assert verdicts[revoked].returncode != 0 and "certificate revoked" in out, out

    # the rollover is an audited event the running service acts on
    with registry.session() as s:
        payloads = [r.payload for r in s.scalars(select(OutboxEvent))]
    events = [p for p in payloads if "ca.rollover" in json.dumps(p)]
    assert len(events) == 1
    assert events[0]["unmapped"]["changes"]["generation"] == 2

    # A fresh load (another process, `up` after a restart) sees the same picture.
    again = FleetCA.load(data, IdentitySettings())
    assert again.generation == 2 and [c.generation for c in again.issuers] == [2, 1]


def test_rollover_event_helper_and_second_rollover(registry, tmp_path: Path) -> None:
    svc = _svc(registry, tmp_path)
    _enroll(svc, "old-a")
    svc.rollover(ACTOR)
    _enroll(svc, "new-c")
    summary = svc.rollover(ACTOR)
    assert summary["generation"] == 3
    assert [c.generation for c in svc.ca.issuers] == [3, 2, 1]
    assert svc.ca.cert.subject.rfc4514_string().startswith("CN=fleetwarden issuing CA 3")
    with registry.session() as s:
        from fleetwarden.events import Event

        evs = [Event.from_ocsf(r.payload) for r in s.scalars(select(OutboxEvent))]
    changes = [rollover_of(e) for e in evs]
    assert [c["generation"] for c in changes if c] == [2, 3]
    assert rollover_of(evs[0]) is None or evs[0].data["unmapped"]["changes"]


def test_retired_ca_dropped_once_its_certificates_expired(registry, tmp_path: Path) -> None:
    svc = _svc(registry, tmp_path)
    _, a = _enroll(svc, "old-a")
    svc.rollover(ACTOR)
    paths = svc.ca.paths
    assert len(svc.ca.retired) == 1
    # still valid certificates: kept
    assert svc.prune_retired() == []
    # after the last one expired it leaves chain.pem, cacerts and the CRL bundle
    after = a.cert.not_valid_after_utc + timedelta(seconds=1)
    dropped = svc.prune_retired(now=after)
    assert [d.generation for d in dropped] == [1]
    svc.ca.write_trust_files()
    assert len(x509.load_pem_x509_certificates(paths.chain.read_bytes())) == 2
    assert paths.crl_bundle.read_bytes() == (
        svc.ca.crl_pem_file.read_bytes() + paths.root_crl_pem.read_bytes()
    )
    # its certificates are no longer accepted for authentication
    with pytest.raises(EnrollmentAuthError, match="not from the fleet CA"):
        svc.device_of(a.cert, now=datetime.now(UTC))


def test_retired_ca_that_issued_nothing_is_not_kept(registry, tmp_path: Path) -> None:
    svc = _svc(registry, tmp_path)
    summary = svc.rollover(ACTOR)
    assert summary["retired"]["trusted_until"] is None
    assert svc.ca.retired == []
    assert len(x509.load_pem_x509_certificates(svc.ca.paths.chain.read_bytes())) == 2


def _unchanged(paths: CaPaths, before: bytes) -> None:
    assert paths.issuing_cert.read_bytes() == before
    assert not paths.state.exists()
    assert not paths.retired_cert(1).exists()


def test_rollover_with_offline_root(registry, tmp_path: Path) -> None:
    data = tmp_path / "data"
    svc = _svc(registry, data)
    paths = svc.ca.paths
    before = paths.issuing_cert.read_bytes()
    offline = tmp_path / "usb"
    export_root(data, svc.settings, offline, remove=True)
    assert not paths.root_key.exists()

    with pytest.raises(RootUnavailableError, match="bring it back with --root-dir"):
        svc.rollover(ACTOR)
    _unchanged(paths, before)

    # a root.crt next to the key that is not this fleet's root
    other = tmp_path / "other"
    init_ca(tmp_path / "other-data", IdentitySettings())
    export_root(tmp_path / "other-data", IdentitySettings(), other, remove=False)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(offline / "root.key", mixed / "root.key")
    shutil.copy(other / "root.crt", mixed / "root.crt")
    with pytest.raises(RootUnavailableError, match="not this fleet's root"):
        svc.rollover(ACTOR, root_dir=mixed)
    _unchanged(paths, before)

    # a key under another passphrase (wrong passphrase)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    key = ec.generate_private_key(ec.SECP384R1())
    (wrong / "root.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"not-the-ca-passphrase"),
        )
    )
    with pytest.raises(RootUnavailableError, match="wrong or missing passphrase"):
        svc.rollover(ACTOR, root_dir=wrong)
    _unchanged(paths, before)

    # no key at all in the directory
    with pytest.raises(RootUnavailableError, match="no root.key"):
        svc.rollover(ACTOR, root_dir=tmp_path / "nowhere")

    summary = svc.rollover(ACTOR, root_dir=offline)
    assert summary["generation"] == 2
    assert not paths.root_key.exists()  # the root stays offline


def test_rollover_refused_when_the_root_expires_first(registry, tmp_path: Path) -> None:
    s = IdentitySettings(root_lifetime_days=100, issuing_lifetime_days=365)
    svc = _svc(registry, tmp_path, s)
    before = svc.ca.paths.issuing_cert.read_bytes()
    with pytest.raises(RootExpiringError, match="roll the root over"):
        svc.rollover(ACTOR)
    _unchanged(svc.ca.paths, before)
    summary = svc.rollover(ACTOR, lifetime=timedelta(days=60))
    assert svc.ca.cert.not_valid_after_utc <= svc.ca.root.not_valid_after_utc
    assert summary["generation"] == 2


def test_a_stale_process_does_not_undo_a_rollover(registry, tmp_path: Path) -> None:
    """`up` loaded generation 1; the CLI rolls over; until `up` reloads (on the event),
    its CRL upkeep must not drop the new issuing CA from chain.pem or the bundle."""
    svc = _svc(registry, tmp_path)
    _enroll(svc, "old-a")
    stale = IdentityService(registry, FleetCA.load(tmp_path, IdentitySettings()))
    svc.rollover(ACTOR)
    paths = svc.ca.paths
    chain, bundle = paths.chain.read_bytes(), paths.crl_bundle.read_bytes()
    stale.regenerate_crl()  # the old process's periodic refresh
    assert paths.chain.read_bytes() == chain and paths.crl_bundle.read_bytes() == bundle
    assert len(x509.load_pem_x509_certificates(chain)) == 3
