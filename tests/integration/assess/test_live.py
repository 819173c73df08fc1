"""``--live``: the assessment reads the real registry (SQLite and PostgreSQL)."""

from __future__ import annotations

import io
from pathlib import Path

from fleetwarden.assess.engine import assess
from fleetwarden.assess.evidence import Evidence, collect
from fleetwarden.assess.evidence.live import collect_live
from fleetwarden.registry import Actor, Registry
from fleetwarden.registry.importer import import_stream

CSV = (
    "device_id,model,risk_class,sector,key_storage,apn,ip,ip_fixed,allowed_cidrs,vlan,groups,"
    "password_hash,debug_ports_enabled\n"
    "m1,em100,high,energy,file,public,10.0.0.1,true,10.0.0.0/8,20,meters,$7$same,true\n"
    "m2,em100,medium,,secure_element,private,10.0.0.2,true,10.0.0.0/8,20,meters,$7$same,false\n"
    "m3,em100,low,,tpm,private,10.0.0.3,false,,,,,\n"
)


def _fill(reg: Registry) -> None:
    import_stream(reg, io.BytesIO(CSV.encode()), fmt="csv", actor=Actor(name="test", via="cli"))


def test_live_reads_registry_devices(registry: Registry) -> None:
    _fill(registry)
    ev = collect_live(registry, Evidence(root="registry"))
    assert set(ev.devices) == {"m1", "m2", "m3"}
    assert (
        ev.devices["m1"].password_hash == "$7$same" and ev.devices["m1"].debug_ports_enabled is True
    )
    assert any("0 device certificates read" in n for n in ev.notes)
    a = assess(ev)
    by = {f.check_id: f for f in a.findings}
    assert by["identity_shared_password_hash"].resources == ["m1", "m2"]
    assert by["identity_high_risk_key_not_in_secure_element"].resources == ["m1"]
    assert by["hardening_debug_ports_enabled"].resources == ["m1"]
    assert by["network_ip_not_fixed"].resources == ["m3"]
    # certificates and firmware tables do not exist yet: MANUAL, not FAIL
    assert by["identity_device_certificate_shared"].status == "MANUAL"
    assert by["firmware_image_unsigned"].status == "MANUAL"


def test_live_combines_with_a_bundle(registry: Registry, tmp_path: Path) -> None:
    _fill(registry)
    root = tmp_path / "b"
    root.mkdir()
    (root / "inventory.csv").write_text("device_id,apn\nm1,private\nb1,public\n")
    ev = collect_live(registry, collect(root))
    assert set(ev.devices) == {"m1", "m2", "m3", "b1"}
    assert ev.devices["m1"].apn == "private"  # the bundle row wins


def test_live_reads_firmware_releases(registry: Registry) -> None:
    """Releases of the firmware control: rollback across versions is checked, content
    scans are MANUAL (no bytes), never PASS."""
    from fleetwarden.firmware.models import FirmwareProduct, FirmwareRelease

    with registry.session() as s:
        p = FirmwareProduct(name="em200")
        s.add(p)
        s.flush()
        for version, counter in (("1.0.0", 5), ("1.1.0", 3)):
            major, minor, rev = (int(x) for x in version.split("."))
            s.add(
                FirmwareRelease(
                    product_id=p.id, version=version, v_major=major, v_minor=minor, v_revision=rev,
                    v_build=0, security_counter=counter, size=100, sha256="0" * 64, digest="0" * 64,
                    key_id="ab" * 32, target_name=f"em200-{version}.bin",
                )
            )  # fmt: skip
    ev = collect_live(registry, Evidence(root="registry"))
    assert any("2 firmware releases" in n for n in ev.notes)
    by = {f.check_id: f for f in assess(ev).findings}
    assert by["firmware_rollback_possible"].resources == ["registry:firmware/em200/1.1.0"]
    assert by["firmware_image_unsigned"].status == "PASS"
    assert by["firmware_signature_invalid"].status == "PASS"
    for cid in (
        "firmware_embedded_private_key",
        "firmware_hardcoded_credentials",
        "firmware_debug_services",
        "components_sbom_missing",
    ):
        assert by[cid].status == "MANUAL", cid


def _cert(cn: str, serial: int, key: object, ca_key: object) -> bytes:
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    now = datetime.now(UTC)
    c = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Fleet CA")]))
        .public_key(key.public_key())  # type: ignore[attr-defined]
        .serial_number(serial)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=90))
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return c.public_bytes(serialization.Encoding.DER)


def test_live_reads_identity_certificates(registry: Registry) -> None:
    """Device certificates of the identity control: shared keys and revoked-but-active found."""
    from datetime import UTC, datetime, timedelta

    from cryptography.hazmat.primitives.asymmetric import ec

    from fleetwarden.identity.models import IssuedCertificate

    _fill(registry)
    ca = ec.generate_private_key(ec.SECP256R1())
    shared = ec.generate_private_key(ec.SECP256R1())
    own = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    rows = [
        ("m1", 11, shared, "active"),
        ("m2", 12, shared, "active"),
        ("m3", 13, own, "revoked"),
        ("m3", 14, own, "superseded"),
    ]
    with registry.session() as s:
        for cn, serial, key, status in rows:
            s.add(
                IssuedCertificate(
                    serial=f"{serial:x}", kind="device", device_id=cn, subject=f"CN={cn}",
                    fingerprint_sha256=f"{serial:064x}", public_key_sha256="0" * 64, key_type="ec",
                    not_before=now - timedelta(days=1), not_after=now + timedelta(days=90), status=status,
                    issued_via="est", der=_cert(cn, serial, key, ca),
                )
            )  # fmt: skip
    ev = collect_live(registry, Evidence(root="registry"))
    assert any("3 device certificates read" in n for n in ev.notes)
    by = {f.check_id: f for f in assess(ev).findings}
    assert by["identity_private_key_shared"].resources == ["m1", "m2"]
    assert by["identity_revoked_cert_still_active"].resources == ["m3"]
    assert by["identity_device_without_certificate"].status == "PASS"
