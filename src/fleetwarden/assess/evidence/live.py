"""Evidence from the running registry (``--live``).

Reads what the registry holds today: devices (with the assessment columns kept as
attributes by the import), the identity control's device certificates and the firmware
control's releases. Tables are looked up by name; when
absent, the kinds stay out of ``Evidence.present`` so the checks that need them report
MANUAL, and a note says which tables were missing.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import inspect, select

from fleetwarden.assess.errors import EvidenceError
from fleetwarden.assess.evidence import Evidence, Skipped, pki
from fleetwarden.assess.evidence.inventory import to_device
from fleetwarden.assess.evidence.types import CrlInfo, FirmwareImage
from fleetwarden.registry import Registry
from fleetwarden.registry.models import Device as DeviceRow

#: tables later controls add, and the evidence kind each would feed
FUTURE_TABLES = {"identity_certificates": "certs", "firmware_releases": "firmware"}


def _certificates(reg: Registry, ev: Evidence) -> int:
    """Device certificates of the identity control (C1), from their stored DER.

    Active and revoked certificates are evidence (a revoked one whose device is still
    active is a finding); superseded ones were rotated away and are left out. Revocations
    become one CRL-like record per issuer, so the revocation checks see them.
    """
    from fleetwarden.identity.models import IssuedCertificate

    revoked: dict[str, set[int]] = {}
    n = 0
    with reg.session() as s:
        q = (
            select(IssuedCertificate)
            .where(IssuedCertificate.kind == "device")
            .where(IssuedCertificate.status.in_(("active", "revoked")))
            .execution_options(yield_per=2000)
        )
        for row in s.execute(q).scalars():
            where = f"registry:certificates/{row.serial}"
            try:
                info = pki.parse_certs(bytes(row.der), where)[0]
            except EvidenceError as exc:
                ev.skipped.append(Skipped(where, "certs", str(exc)))
                continue
            ev.certs.append(info)
            n += 1
            if row.status == "revoked":
                revoked.setdefault(info.issuer, set()).add(info.serial)
    for issuer, serials in revoked.items():
        ev.crls.append(
            CrlInfo(
                path="registry:revocations",
                issuer=issuer,
                last_update=ev.now,
                next_update=None,
                revoked=frozenset(serials),
            )
        )
    if n:
        ev.present.update({"certs", "crls"})
    return n


def _firmware_releases(reg: Registry, ev: Evidence) -> int:
    """Releases of the firmware control (C6) as firmware evidence.

    Each release was verified against the trusted keys when it was uploaded, so it is
    signed and valid; its bytes are not read here, so the content scans report MANUAL
    for it (``scanned`` False), never PASS.
    """
    from fleetwarden.firmware.models import FirmwareProduct, FirmwareRelease

    n = 0
    with reg.session() as s:
        rows = s.execute(
            select(FirmwareProduct.name, FirmwareRelease).join(
                FirmwareRelease, FirmwareRelease.product_id == FirmwareProduct.id
            )
        )
        for product, rel in rows:
            ev.firmware.append(
                FirmwareImage(
                    path=f"registry:firmware/{product}/{rel.version}",
                    size=rel.size,
                    sha256=rel.sha256,
                    format="mcuboot",
                    product=product,
                    version=(rel.v_major, rel.v_minor, rel.v_revision, rel.v_build),
                    security_counter=rel.security_counter,
                    hash_ok=True,
                    signature_type="verified at upload",
                    signed=True,
                    signature_valid=True,
                    signer=rel.key_id,
                    scanned=False,
                )
            )
            n += 1
    if n:
        ev.present.update({"firmware", "firmware_keys"})
    return n


def collect_live(reg: Registry, ev: Evidence) -> Evidence:
    """Merge registry devices into ``ev`` (bundle rows win on the same id)."""
    tables = set(inspect(reg.engine).get_table_names())
    n = 0
    with reg.session() as s:
        for d in s.execute(select(DeviceRow).execution_options(yield_per=5000)).scalars():
            if d.id in ev.devices:
                continue
            row: dict[str, Any] = {
                "device_id": d.id,
                "model": d.model,
                "risk_class": d.risk_class,
                "sector": d.sector,
                "firmware_version": d.firmware_version,
                "key_storage": d.key_storage,
                "apn": d.apn,
                "ip": d.ip,
                "ip_fixed": d.ip_fixed,
                "allowed_cidrs": list(d.allowed_cidrs or []) or None,
                "vlan": d.vlan,
                "status": d.status,
            }
            attrs = dict(d.attributes or {})
            for key in (
                "password_hash",
                "open_ports",
                "debug_ports_enabled",
                "secure_boot",
                "last_seen",
            ):
                if key in attrs:
                    row[key] = attrs[key]
            row = {k: v for k, v in row.items() if v is not None}
            try:
                ev.devices[d.id] = to_device(row)
                n += 1
            except ValueError as exc:
                ev.inventory_problems.append(f"registry device {d.id}: {str(exc)[:200]}")
                ev.inventory_bad_rows += 1
    ev.present.add("inventory")
    ev.notes.append(f"live: {n} devices read from the registry")
    if "identity_certificates" in tables:
        ev.notes.append(
            f"live: {_certificates(reg, ev)} device certificates read from the registry"
        )
    if "firmware_releases" in tables:
        ev.notes.append(
            f"live: {_firmware_releases(reg, ev)} firmware releases read from the registry"
        )
    for table, kind in FUTURE_TABLES.items():
        if table not in tables and kind not in ev.present:
            ev.notes.append(
                f"live: the registry has no {table} table yet; checks needing {kind} are MANUAL"
            )
    return ev
