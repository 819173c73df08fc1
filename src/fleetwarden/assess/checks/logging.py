"""C7 audit logs: broker logging on, connection messages kept, client ids unique."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from fleetwarden.assess.checks import check
from fleetwarden.assess.checks._util import device_checks, status
from fleetwarden.assess.evidence import Evidence
from fleetwarden.assess.evidence.types import Device
from fleetwarden.assess.model import MANUAL, Result

SILENT_DAYS = 30


@check(
    title="Broker logging disabled",
    severity="low",
    rationale="Without broker logs there is no trail of who connected and when.",
    remediation="Set log_dest (file, syslog or stdout) and log_type notice/warning/error.",
    effort="S",
    needs=("broker",),
    controls=("C7",),
    device_defender="LOGGING_DISABLED_CHECK",
    task="logging_on",
    scope="file",
)
def logging_broker_disabled(ev: Evidence) -> Iterator[Result]:
    for b in ev.brokers:
        off = "none" in b.log_dest or "none" in b.log_type
        yield status(not off, b.path, "log_dest/log_type none")


@check(
    title="Broker connection messages disabled",
    severity="low",
    rationale="connection_messages false removes exactly the events an investigation needs.",
    remediation="Set connection_messages true.",
    effort="S",
    needs=("broker",),
    controls=("C7",),
    task="logging_on",
    scope="file",
)
def logging_connection_messages_off(ev: Evidence) -> Iterator[Result]:
    for b in ev.brokers:
        yield status(b.connection_messages, b.path, "connection_messages false")


@check(
    title="Conflicting MQTT client ids",
    severity="high",
    rationale="One client id connecting from several addresses, or taking over a live "
    "session, means cloned credentials or a misbehaving device.",
    remediation="Bind client id to the certificate identity and investigate the sources.",
    effort="M",
    needs=("logs",),
    controls=("C7", "C1"),
    owasp=("I8", "I1"),
    device_defender="CONFLICTING_CLIENT_IDS_CHECK",
    task="contain_shared_credentials",
)
def logging_conflicting_client_ids(ev: Evidence) -> Iterator[Result]:
    ips: dict[str, set[str]] = {}
    takeovers: dict[str, int] = {}
    for log in ev.logs:
        for cid, s in log.client_ips.items():
            ips.setdefault(cid, set()).update(s)
        for cid, n in log.takeovers.items():
            takeovers[cid] = takeovers.get(cid, 0) + n
    for cid in sorted(set(ips) | set(takeovers)):
        n_ip, n_take = len(ips.get(cid, ())), takeovers.get(cid, 0)
        yield status(n_ip <= 1 and n_take == 0, cid, f"{n_ip} source addresses, {n_take} takeovers")


@check(
    title="Anonymous connections in the broker log",
    severity="high",
    rationale="Clients connected without a username: anonymous access is used in practice.",
    remediation="Disable anonymous access; find and enrol these clients.",
    effort="S",
    needs=("logs",),
    controls=("C7", "C2"),
    owasp=("I1", "I9"),
    task="contain_exposure",
    scope="file",
)
def logging_anonymous_connections(ev: Evidence) -> Iterator[Result]:
    for log in ev.logs:
        n = log.anonymous_connections
        yield status(n == 0, log.path, f"{n} connections without a username")


@check(
    title="Device not seen for 30 days",
    severity="low",
    rationale="Silent devices are unmanaged: not updated, not rotated, possibly stolen.",
    remediation="Investigate, then update or decommission (revoke its certificate).",
    effort="S",
    needs=("inventory",),
    controls=("C7",),
    owasp=("I8",),
    task="inventory_hygiene",
)
def logging_device_silent(ev: Evidence) -> Iterator[Result]:
    cutoff = ev.now - timedelta(days=SILENT_DAYS)

    def test(d: Device) -> Result:
        if d.last_seen is None:
            return MANUAL(d.id, "last_seen not recorded")
        return status(d.last_seen >= cutoff, d.id, f"last seen {d.last_seen.date()}")

    yield from device_checks(ev, test)
