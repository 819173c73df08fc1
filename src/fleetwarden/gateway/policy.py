"""Device policy for the broker plugin, compiled from the registry (C3/C4, C8).

The plugin reads two files, both written atomically (0600):

- ``policy.tsv``: one line per device,
  ``D <id> <status> <refused 0|1> <group,...> <cidr,...> <rule label> <quarantine 0|1>``
  (tab-separated); quarantine = member of the quarantine group (the detection
  control's mitigation), which confines the device to ``quarantine/<id>/...``.
  The effective source networks of a device are its own ``allowed_cidrs`` plus its fixed
  IP when ``ip_fixed``; when it has none, the union of its groups' ``allowed_cidrs``; when
  nothing is set anywhere, the device is not bound to a network. The rule label names
  the registry object that set the rule, for the refusal event.
- ``revoked.txt``: one revoked certificate serial per line, lowercase hex without
  leading zeros (the plugin's canonical form), from the CRL file and live revocations.

Registry ids and group names match ``[A-Za-z0-9][A-Za-z0-9._:@-]*``, so they never
contain the tab, comma or MQTT wildcard characters the format and the ACL rely on;
anything else is skipped rather than trusted.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from sqlalchemy import select

from fleetwarden._internal.files import write_secret
from fleetwarden.registry import Registry
from fleetwarden.registry.models import Device, Group, device_groups

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")


@dataclass(frozen=True, slots=True)
class DevicePolicy:
    device_id: str
    status: str
    refused: bool
    groups: tuple[str, ...]
    cidrs: tuple[str, ...]
    rule: str
    quarantined: bool = False


def canonical_serial(serial: int | str) -> str:
    """Serial as the plugin compares it: lowercase hex, no leading zeros."""
    value = int(serial, 16) if isinstance(serial, str) else serial
    return format(value, "x")


def _norm_cidrs(values: Iterable[str]) -> list[str]:
    out: list[str] = []
    for v in values:
        try:
            out.append(str(ipaddress.ip_network(str(v), strict=False)))
        except ValueError:
            continue  # the registry validates; a bad row is dropped, never widened
    return out


def compile_policy(
    registry: Registry, refused_statuses: Iterable[str], quarantine_group: str | None = None
) -> list[DevicePolicy]:
    """One policy per device, ordered by id.

    Two plain column queries (devices; memberships joined with their groups), no ORM
    objects: this runs on every registry change and every ``policy_refresh_s`` over the
    whole fleet, so its cost is per device row, not per ORM object and relationship
    load. Each group's networks are normalised once, not once per member."""
    refused_set = {s.lower() for s in refused_statuses}
    result: list[DevicePolicy] = []
    with registry.session() as s:
        group_cidrs: dict[str, list[str]] = {}
        group_has_rule: dict[str, bool] = {}  # networks set (even if none is usable)
        groups_of: dict[str, list[str]] = {}
        rows = s.execute(
            select(device_groups.c.device_id, Group.name, Group.allowed_cidrs)
            .join(Group, Group.id == device_groups.c.group_id)
            .order_by(device_groups.c.device_id, Group.name)
        )
        for dev_id, name, g_cidrs in rows:
            if name not in group_cidrs:
                group_cidrs[name] = _norm_cidrs(g_cidrs or [])
                group_has_rule[name] = bool(g_cidrs)
            groups_of.setdefault(dev_id, []).append(name)
        devices = s.execute(
            select(
                Device.id, Device.status, Device.allowed_cidrs, Device.ip_fixed, Device.ip
            ).order_by(Device.id)
        )
        for dev_id, status, allowed, ip_fixed, ip in devices:
            if not _SAFE.match(dev_id):
                continue
            member_of = groups_of.get(dev_id, [])
            groups = tuple(g for g in member_of if _SAFE.match(g))
            own = list(allowed or [])
            if ip_fixed and ip:
                own.append(ip)
            cidrs = _norm_cidrs(own)
            if cidrs:
                rule = f"device:{dev_id} allowed_cidrs={','.join(cidrs)}"
            else:
                gcidrs: list[str] = []
                names: list[str] = []
                for g in member_of:
                    if group_has_rule[g]:
                        names.append(g)
                        gcidrs.extend(group_cidrs[g])
                cidrs = sorted(set(gcidrs))
                rule = f"group:{','.join(names)} allowed_cidrs={','.join(cidrs)}" if cidrs else ""
            result.append(
                DevicePolicy(
                    device_id=dev_id,
                    status=status,
                    refused=status.lower() in refused_set,
                    groups=groups,
                    cidrs=tuple(cidrs),
                    rule=rule or "-",
                    quarantined=quarantine_group is not None and quarantine_group in member_of,
                )
            )
    return result


def render_policy(policies: Iterable[DevicePolicy]) -> str:
    lines = ["# fleetwarden gateway policy (generated; do not edit)"]
    for p in policies:
        fields = [
            "D",
            p.device_id,
            p.status[:32] or "-",
            "1" if p.refused else "0",
            ",".join(p.groups),
            ",".join(p.cidrs),
            p.rule.replace("\t", " ")[:150],
            "1" if p.quarantined else "0",
        ]
        lines.append("\t".join(fields))
    return "\n".join(lines) + "\n"


def crl_serials(path: Path) -> set[str]:
    """Revoked serials of a DER CRL or a PEM file holding one or more CRLs (after an
    issuing-CA rollover the fleet CA publishes one CRL per issuing CA in one bundle);
    an unreadable CRL raises ``ValueError``."""
    data = path.read_bytes()
    if len(data) > 256 * 1024 * 1024:
        raise ValueError(f"{path}: CRL larger than 256 MiB")
    if not data.lstrip().startswith(b"-----"):
        return {canonical_serial(r.serial_number) for r in x509.load_der_x509_crl(data)}
    blocks = _PEM_CRL.findall(data)
    if not blocks:
        raise ValueError(f"{path}: no PEM CRL in the file")
    serials: set[str] = set()
    for block in blocks:
        serials |= {canonical_serial(r.serial_number) for r in x509.load_pem_x509_crl(block)}
    return serials


_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)


def render_revoked(serials: Iterable[str]) -> str:
    return "".join(f"{s}\n" for s in sorted(set(serials)))


def write_if_changed(path: Path, content: str) -> bool:
    data = content.encode()
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    write_secret(path, data)
    return True
