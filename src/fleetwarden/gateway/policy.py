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
from fleetwarden.registry.models import Device

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
    refused_set = {s.lower() for s in refused_statuses}
    result: list[DevicePolicy] = []
    with registry.session() as s:
        for dev in s.scalars(select(Device).order_by(Device.id)):
            if not _SAFE.match(dev.id):
                continue
            groups = tuple(g.name for g in dev.groups if _SAFE.match(g.name))
            own = list(dev.allowed_cidrs or [])
            if dev.ip_fixed and dev.ip:
                own.append(dev.ip)
            cidrs = _norm_cidrs(own)
            if cidrs:
                rule = f"device:{dev.id} allowed_cidrs={','.join(cidrs)}"
            else:
                gcidrs: list[str] = []
                names: list[str] = []
                for g in dev.groups:
                    if g.allowed_cidrs:
                        names.append(g.name)
                        gcidrs.extend(_norm_cidrs(g.allowed_cidrs))
                cidrs = sorted(set(gcidrs))
                rule = f"group:{','.join(names)} allowed_cidrs={','.join(cidrs)}" if cidrs else ""
            result.append(
                DevicePolicy(
                    device_id=dev.id,
                    status=dev.status,
                    refused=dev.status.lower() in refused_set,
                    groups=groups,
                    cidrs=tuple(cidrs),
                    rule=rule or "-",
                    quarantined=quarantine_group is not None
                    and any(g.name == quarantine_group for g in dev.groups),
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
