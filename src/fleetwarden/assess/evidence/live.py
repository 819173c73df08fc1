"""Evidence from the running registry (``--live``).

Reads what the registry holds today: devices (with their groups and the assessment
columns kept as attributes by the import). Tables that other controls add later
(certificates, firmware releases) are looked up by name; when absent, the kinds stay
out of ``Evidence.present`` so the checks that need them report MANUAL, and a note says
which tables were missing.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import inspect, select

from fleetwarden.assess.evidence import Evidence
from fleetwarden.assess.evidence.inventory import to_device
from fleetwarden.registry import Registry
from fleetwarden.registry.models import Device as DeviceRow

#: tables later controls add, and the evidence kind each would feed
FUTURE_TABLES = {"certificates": "certs", "firmware_releases": "firmware"}


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
    for table, kind in FUTURE_TABLES.items():
        if table not in tables and kind not in ev.present:
            ev.notes.append(
                f"live: the registry has no {table} table yet; checks needing {kind} are MANUAL"
            )
    return ev
