"""C8 segmentation: VLANs for devices, per-device MQTT topics (ACL) at the broker."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from fleetwarden.assess.checks import check
from fleetwarden.assess.checks._util import device_checks, status
from fleetwarden.assess.evidence import Evidence
from fleetwarden.assess.evidence.types import Device
from fleetwarden.assess.model import FAIL, MANUAL, PASS, Result

MIXED = ("office", "corporate", "guest", "user", "staff", "wifi", "it ")


@check(
    title="Device not assigned to a VLAN",
    severity="medium",
    rationale="Devices outside a dedicated VLAN share a broadcast domain with other systems.",
    remediation="Place devices on dedicated IoT VLANs and record the VLAN per device.",
    effort="M",
    needs=("inventory",),
    controls=("C8",),
    task="segmentation",
)
def segmentation_device_without_vlan(ev: Evidence) -> Iterator[Result]:
    yield from device_checks(ev, lambda d: status(d.vlan is not None, d.id, "no VLAN"))


@check(
    title="Device VLAN not in the VLAN table",
    severity="low",
    rationale="A VLAN nobody documented has no owner and no known purpose or filter.",
    remediation="Document every VLAN (vlan, name, purpose, cidr) or move the device.",
    effort="S",
    needs=("inventory", "vlans"),
    controls=("C8",),
    task="segmentation",
)
def segmentation_vlan_undocumented(ev: Evidence) -> Iterator[Result]:
    known = {v.vlan for v in ev.vlans}
    yield from device_checks(
        ev, lambda d: None if d.vlan is None else status(d.vlan in known, d.id, f"VLAN {d.vlan}")
    )


@check(
    title="Device address outside its VLAN's network",
    severity="low",
    rationale="An address outside the VLAN's CIDR means the VLAN table or the addressing is "
    "wrong, and firewall rules built from it miss the device.",
    remediation="Fix the device address or the VLAN table.",
    effort="S",
    needs=("inventory", "vlans"),
    controls=("C8", "C4"),
    task="segmentation",
)
def segmentation_ip_outside_vlan(ev: Evidence) -> Iterator[Result]:
    nets = {v.vlan: ipaddress.ip_network(v.cidr) for v in ev.vlans if v.cidr}

    def test(d: Device) -> Result | None:
        if d.vlan not in nets or not d.ip:
            return None
        return status(ipaddress.ip_address(d.ip) in nets[d.vlan], d.id, f"{d.ip} not in VLAN")

    yield from device_checks(ev, test)


@check(
    title="Devices share a VLAN with office or user systems",
    severity="medium",
    rationale="IoT devices on a corporate or guest VLAN can be reached (and can reach) "
    "laptops and servers directly.",
    remediation="Move devices to VLANs used for IoT only.",
    effort="M",
    needs=("inventory", "vlans"),
    controls=("C8",),
    task="segmentation",
)
def segmentation_mixed_purpose_vlan(ev: Evidence) -> Iterator[Result]:
    purpose = {v.vlan: f"{v.name} {v.purpose} ".lower() for v in ev.vlans}

    def test(d: Device) -> Result | None:
        if d.vlan not in purpose:
            return None
        mixed = any(w in purpose[d.vlan] for w in MIXED)
        return status(not mixed, d.id, f"VLAN {d.vlan}: {purpose[d.vlan].strip()}")

    yield from device_checks(ev, test)


@check(
    title="Overly permissive broker ACL (wildcard topic access)",
    severity="critical",
    rationale="A client allowed '#' reads or writes every device's topics: one compromised "
    "device commands the fleet. No ACL file at all means the same.",
    remediation="Give each device access to its own subtree only (pattern readwrite "
    "devices/%u/#); keep fleet-wide access for named backend users.",
    effort="M",
    needs=("broker",),
    controls=("C8",),
    owasp=("I3", "I9"),
    device_defender="IOT_POLICY_OVERLY_PERMISSIVE_CHECK",
    task="segmentation",
    scope="file",
    likelihood=6.5,
    impact=8.0,
)
def segmentation_acl_overly_permissive(ev: Evidence) -> Iterator[Result]:
    for b in ev.brokers:
        if b.acl_file is None:
            yield FAIL(b.path, "no acl_file: every authenticated client may use every topic")
            continue
        if b.acl is None:
            yield MANUAL(b.path, f"ACL file {b.acl_file} not in the bundle")
            continue
        bad = [
            e
            for e in b.acl
            if e.access != "deny"
            and e.topic.split("/")[0] in {"#", "+"}
            and (e.kind == "pattern" or e.user is None)
        ]
        for e in bad:
            yield FAIL(f"{b.path}#acl line {e.line}", f"{e.kind} {e.access} {e.topic}")
        if not bad:
            yield PASS(b.path)


@check(
    title="Broker ACL not scoped per device",
    severity="medium",
    rationale="Without a %c or %u pattern, devices share topic namespaces and can spoof each "
    "other's telemetry.",
    remediation="Add pattern rules scoped by %u (certificate identity) or %c.",
    effort="S",
    needs=("broker",),
    controls=("C8",),
    owasp=("I3",),
    device_defender="IOT_POLICY_POTENTIAL_MIS_CONFIGURATION_CHECK",
    task="segmentation",
    scope="file",
)
def segmentation_acl_not_per_device(ev: Evidence) -> Iterator[Result]:
    for b in ev.brokers:
        if b.acl_file is None:
            continue  # reported by segmentation_acl_overly_permissive
        if b.acl is None:
            yield MANUAL(b.path, f"ACL file {b.acl_file} not in the bundle")
            continue
        scoped = any(e.kind == "pattern" and ("%u" in e.topic or "%c" in e.topic) for e in b.acl)
        yield status(scoped, b.path, "no %u/%c pattern")
