"""C3 private APN and C4 fixed IP for firewalling, from the inventory and the firewall."""

from __future__ import annotations

from collections.abc import Iterator

from fleetwarden.assess.checks import check
from fleetwarden.assess.checks._util import device_checks, status
from fleetwarden.assess.evidence import Evidence
from fleetwarden.assess.evidence.types import Device, FwRule
from fleetwarden.assess.model import MANUAL, Result

ANY = {None, "0.0.0.0/0", "::/0"}
MQTT_PORTS = {1883, 8883, 8080, 8081, 9001}
INSECURE_PORTS = {21: "ftp", 23: "telnet", 69: "tftp", 161: "snmp", 2323: "telnet", 5555: "adb"}


def _open_rules(rule: FwRule) -> bool:
    return rule.action == "accept" and rule.source in ANY and rule.proto != "cond"


@check(
    title="Device on a public APN",
    severity="medium",
    rationale="A public APN puts the device on the internet; a private APN with VPN shrinks "
    "the attack surface (it replaces no other control).",
    remediation="Move devices to a private APN with an IPsec/WireGuard tunnel to the backend.",
    effort="L",
    needs=("inventory",),
    controls=("C3",),
    task="private_apn",
)
def network_public_apn(ev: Evidence) -> Iterator[Result]:
    def test(d: Device) -> Result:
        if d.apn is None:
            return MANUAL(d.id, "apn not recorded")
        return status(d.apn == "private", d.id, "public APN")

    yield from device_checks(ev, test)


@check(
    title="Device without a fixed IP address",
    severity="medium",
    rationale="Without a fixed address the firewall cannot allow exactly the fleet's "
    "devices; rules end up open to everyone.",
    remediation="Assign fixed addresses (private APN static IPs) and record them.",
    effort="M",
    needs=("inventory",),
    controls=("C4",),
    task="private_apn",
)
def network_ip_not_fixed(ev: Evidence) -> Iterator[Result]:
    def test(d: Device) -> Result:
        if d.ip_fixed is None:
            return MANUAL(d.id, "ip_fixed not recorded")
        return status(bool(d.ip_fixed and d.ip), d.id, "no fixed IP")

    yield from device_checks(ev, test)


@check(
    title="Device allowed from any source network",
    severity="medium",
    rationale="An allow-list of 0.0.0.0/0 is no allow-list.",
    remediation="List only the backend and management networks in allowed_cidrs.",
    effort="S",
    needs=("inventory",),
    controls=("C4",),
    task="firewall",
)
def network_device_allowed_from_any(ev: Evidence) -> Iterator[Result]:
    def test(d: Device) -> Result:
        if not d.allowed_cidrs:
            return MANUAL(d.id, "allowed_cidrs not recorded")
        return status(not (set(d.allowed_cidrs) & {"0.0.0.0/0", "::/0"}), d.id, "0.0.0.0/0")

    yield from device_checks(ev, test)


@check(
    title="Firewall input policy accepts by default",
    severity="high",
    rationale="A default-accept input policy exposes every service not explicitly blocked.",
    remediation="Set the input chain policy to drop and allow only what the fleet needs.",
    effort="S",
    needs=("network",),
    controls=("C4",),
    task="firewall",
    scope="file",
)
def network_firewall_default_accept(ev: Evidence) -> Iterator[Result]:
    for fw in ev.firewalls:
        yield status(fw.input_policy != "accept", fw.path, f"{fw.kind} input policy accept")


@check(
    title="Broker port open to any source",
    severity="high",
    rationale="MQTT reachable from anywhere invites credential stuffing and exploit "
    "attempts; fixed device IPs exist so this can be narrowed.",
    remediation="Allow 8883 only from the fleet's CIDRs (private APN range, VPN).",
    effort="S",
    needs=("network",),
    controls=("C4", "C3"),
    task="contain_exposure",
    scope="file",
    likelihood=7.0,
    impact=6.0,
)
def network_broker_open_to_any(ev: Evidence) -> Iterator[Result]:
    for fw in ev.firewalls:
        bad = [
            r for r in fw.rules if _open_rules(r) and (r.ports is None or set(r.ports) & MQTT_PORTS)
        ]
        yield status(not bad, fw.path, "; ".join(f"line {r.line}" for r in bad[:5]))


@check(
    title="Insecure service ports open to any source",
    severity="high",
    rationale="Telnet, FTP, TFTP, SNMP and ADB reachable from anywhere are classic entry points.",
    remediation="Drop these ports at the firewall and disable the services on devices.",
    effort="S",
    needs=("network",),
    controls=("C4",),
    owasp=("I2",),
    task="contain_exposure",
    scope="file",
)
def network_insecure_ports_open(ev: Evidence) -> Iterator[Result]:
    for fw in ev.firewalls:
        bad = [
            f"{INSECURE_PORTS[p]} (line {r.line})"
            for r in fw.rules
            if _open_rules(r) and r.ports
            for p in r.ports
            if p in INSECURE_PORTS
        ]
        yield status(not bad, fw.path, ", ".join(bad[:5]))


@check(
    title="Firewall rule accepts all traffic from any source",
    severity="high",
    rationale="An accept rule with no source and no port restriction disables the firewall "
    "for everything after it.",
    remediation="Replace it with rules naming sources and ports.",
    effort="S",
    needs=("network",),
    controls=("C4", "C8"),
    task="firewall",
    scope="file",
)
def network_firewall_accept_all(ev: Evidence) -> Iterator[Result]:
    for fw in ev.firewalls:
        bad = [r for r in fw.rules if _open_rules(r) and r.ports is None and r.proto is None]
        yield status(not bad, fw.path, "; ".join(f"line {r.line}" for r in bad[:5]))
