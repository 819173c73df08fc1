"""OWASP items outside the ten controls: I2 services, I6 privacy, I9 defaults, I10 ports."""

from __future__ import annotations

from collections.abc import Iterator

from fleetwarden.assess.checks import check
from fleetwarden.assess.checks._util import device_checks, status
from fleetwarden.assess.evidence import Evidence
from fleetwarden.assess.evidence.types import Device
from fleetwarden.assess.model import MANUAL, Result

INSECURE = {21: "ftp", 23: "telnet", 69: "tftp", 80: "http", 161: "snmp", 2323: "telnet",
            5555: "adb", 1883: "plain mqtt"}  # fmt: skip


@check(
    title="Insecure network services open on the device",
    severity="high",
    rationale="Telnet, FTP, TFTP, HTTP, SNMP, ADB and plain MQTT on the device itself are "
    "reachable by anyone who reaches the device.",
    remediation="Disable these services in the release build.",
    effort="M",
    needs=("inventory",),
    controls=(),
    owasp=("I2",),
    etsi=("5.6-1",),
    cra=("I(j)",),
    nistir=("LA",),
    task="harden_devices",
)
def hardening_insecure_services(ev: Evidence) -> Iterator[Result]:
    def test(d: Device) -> Result:
        if d.open_ports is None:
            return MANUAL(d.id, "open_ports not recorded")
        bad = [f"{p}/{INSECURE[p]}" for p in d.open_ports if p in INSECURE]
        return status(not bad, d.id, ", ".join(bad))

    yield from device_checks(ev, test)


@check(
    title="Debug ports enabled on the device",
    severity="high",
    rationale="Open JTAG/SWD/UART lets anyone with physical access dump keys and firmware.",
    remediation="Lock debug ports (fuse/OTP) in production.",
    effort="M",
    needs=("inventory",),
    controls=(),
    owasp=("I10",),
    etsi=("5.6-4",),
    cra=("I(j)", "I(k)"),
    nistir=("LA",),
    task="harden_devices",
)
def hardening_debug_ports_enabled(ev: Evidence) -> Iterator[Result]:
    def test(d: Device) -> Result:
        if d.debug_ports_enabled is None:
            return MANUAL(d.id, "debug_ports_enabled not recorded")
        return status(not d.debug_ports_enabled, d.id, "debug ports enabled")

    yield from device_checks(ev, test)


@check(
    title="Personal data without a retention limit",
    severity="medium",
    rationale="Telemetry that includes personal data must be minimised and deleted on "
    "schedule (GDPR; ETSI 5.8, clause 6; CRA I(g)).",
    remediation="Set [privacy] telemetry_retention_days and enforce it.",
    effort="S",
    needs=("policy",),
    controls=(),
    owasp=("I6",),
    etsi=("5.8", "5.11", "6"),
    cra=("I(g)", "I(m)"),
    nistir=("DP",),
    task="privacy",
    scope="fleet",
)
def privacy_retention_undefined(ev: Evidence) -> Iterator[Result]:
    assert ev.policy is not None
    if ev.policy.personal_data is None:
        yield MANUAL("policy.toml", "[privacy] personal_data not stated")
    elif ev.policy.personal_data:
        ok = ev.policy.telemetry_retention_days is not None
        yield status(ok, "policy.toml", "no telemetry_retention_days")


@check(
    title="Personal data carried over unencrypted transport",
    severity="high",
    rationale="Personal data in plain MQTT is readable on every network hop.",
    remediation="Serve MQTT only over TLS.",
    effort="M",
    needs=("policy", "broker"),
    controls=("C2",),
    owasp=("I6", "I7"),
    etsi=("5.8", "5.5-7"),
    cra=("I(e)",),
    nistir=("DP",),
    task="mtls_everywhere",
    scope="fleet",
)
def privacy_personal_data_in_clear(ev: Evidence) -> Iterator[Result]:
    from fleetwarden.assess.checks.transport import exposed

    assert ev.policy is not None
    if ev.policy.personal_data is None:
        yield MANUAL("policy.toml", "[privacy] personal_data not stated")
        return
    if not ev.policy.personal_data:
        return
    for b in ev.brokers:
        plain = [lst.port for lst in b.listeners if exposed(lst) and not lst.tls]
        yield status(not plain, b.path, f"plain listeners {plain}")


@check(
    title="Devices expected controls not declared",
    severity="info",
    rationale="policy.toml should state which of C1-C10 the fleet claims, so the audit "
    "compares claim and evidence.",
    remediation="List the controls in [controls] expected.",
    effort="S",
    needs=("policy",),
    controls=(),
    owasp=("I8",),
    etsi=("5.12",),
    cra=("II(3)",),
    nistir=("DC",),
    task="inventory_hygiene",
    scope="fleet",
)
def hardening_expected_controls_undeclared(ev: Evidence) -> Iterator[Result]:
    assert ev.policy is not None
    yield status(bool(ev.policy.expected_controls), "policy.toml", "no [controls] expected")


@check(
    title="Inventory rows that could not be read",
    severity="low",
    rationale="Devices missing from the readable inventory escape every check.",
    remediation="Fix the listed rows (the registry import applies the same validation).",
    effort="S",
    needs=("inventory",),
    controls=(),
    owasp=("I8",),
    etsi=("5.12",),
    cra=("II(3)",),
    nistir=("DI",),
    task="inventory_hygiene",
    scope="file",
)
def hardening_inventory_rows_invalid(ev: Evidence) -> Iterator[Result]:
    n = ev.inventory_bad_rows
    yield status(n == 0, "inventory", f"{n} rows invalid: " + "; ".join(ev.inventory_problems[:3]))
