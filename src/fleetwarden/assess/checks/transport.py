"""C2 mutual TLS at the broker, and M3 public APN without mutual TLS."""

from __future__ import annotations

from collections.abc import Iterator

from fleetwarden.assess.checks import check
from fleetwarden.assess.checks._util import device_checks, status
from fleetwarden.assess.evidence import Evidence
from fleetwarden.assess.evidence.types import Broker, Device, Listener
from fleetwarden.assess.model import Result

LOCAL = {"127.0.0.1", "::1", "localhost"}


def exposed(listener: Listener) -> bool:
    return (listener.address or "0.0.0.0") not in LOCAL  # noqa: S104 - a value, not a bind


def _res(b: Broker, listener: Listener) -> str:
    return f"{b.path}#listener {listener.port}"


def anonymous(b: Broker, listener: Listener) -> bool:
    if b.per_listener_settings and listener.allow_anonymous is not None:
        return listener.allow_anonymous
    return bool(b.allow_anonymous)


def mtls(listener: Listener) -> bool:
    return listener.tls and listener.require_certificate


def _listeners(ev: Evidence) -> Iterator[tuple[Broker, Listener]]:
    for b in ev.brokers:
        for listener in b.listeners:
            if exposed(listener):
                yield b, listener


@check(
    title="Network-facing broker listener without TLS",
    severity="high",
    rationale="Plain MQTT sends credentials and telemetry in clear and lets anyone on the "
    "path inject commands.",
    remediation="Serve MQTT only over TLS (8883) on network-facing listeners; keep plain "
    "1883 bound to localhost if needed at all.",
    effort="M",
    needs=("broker",),
    controls=("C2",),
    extra_owasp=("I2",),
    task="mtls_everywhere",
    scope="file",
)
def transport_listener_without_tls(ev: Evidence) -> Iterator[Result]:
    for b, listener in _listeners(ev):
        yield status(listener.tls, _res(b, listener), "no cafile/certfile on this listener")


@check(
    title="TLS listener does not require client certificates",
    severity="high",
    rationale="Without require_certificate the server is authenticated but devices are not "
    "(one-way TLS).",
    remediation="Set require_certificate true with the device CA as cafile.",
    effort="M",
    needs=("broker",),
    controls=("C2",),
    task="mtls_everywhere",
    scope="file",
)
def transport_client_certificate_not_required(ev: Evidence) -> Iterator[Result]:
    for b, listener in _listeners(ev):
        if listener.tls:
            yield status(listener.require_certificate, _res(b, listener), "one-way TLS only")


@check(
    title="Broker accepts anonymous clients",
    severity="critical",
    rationale="allow_anonymous lets any client that reaches the port publish and subscribe.",
    remediation="Set allow_anonymous false and authenticate every client (mTLS).",
    effort="S",
    needs=("broker",),
    controls=("C2",),
    extra_owasp=("I1", "I9"),
    extra_cra=("I(b)",),
    task="contain_exposure",
    scope="file",
    likelihood=8.0,
    impact=7.5,
)
def transport_anonymous_access(ev: Evidence) -> Iterator[Result]:
    for b, listener in _listeners(ev):
        yield status(not anonymous(b, listener), _res(b, listener), "allow_anonymous true")


@check(
    title="Outdated TLS version allowed",
    severity="medium",
    rationale="TLS 1.0 and 1.1 are deprecated (RFC 8996).",
    remediation="Set tls_version tlsv1.2 or tlsv1.3.",
    effort="S",
    needs=("broker",),
    controls=("C2",),
    task="mtls_everywhere",
    scope="file",
)
def transport_tls_version_outdated(ev: Evidence) -> Iterator[Result]:
    for b, listener in _listeners(ev):
        if listener.tls:
            old = listener.tls_version in {"tlsv1", "tlsv1.1", "tlsv1.0"}
            yield status(not old, _res(b, listener), f"tls_version {listener.tls_version}")


@check(
    title="Weak cipher suites configured",
    severity="medium",
    rationale="NULL, export, RC4, DES/3DES and MD5 suites are broken.",
    remediation="Leave ciphers at the OpenSSL default or list only AEAD suites.",
    effort="S",
    needs=("broker",),
    controls=("C2",),
    task="mtls_everywhere",
    scope="file",
)
def transport_weak_ciphers(ev: Evidence) -> Iterator[Result]:
    bad = ("NULL", "EXP", "RC4", "DES", "MD5", "ANON", "ADH", "AECDH")
    for b, listener in _listeners(ev):
        if listener.tls:
            c = (listener.ciphers or "").upper()
            weak = [w for w in bad if w in c and f"!{w}" not in c]
            yield status(not weak, _res(b, listener), f"ciphers include {', '.join(weak)}")


@check(
    title="Client certificate not bound to the MQTT identity",
    severity="medium",
    rationale="Without use_identity_as_username a device with a valid certificate can claim "
    "any username, so per-device ACLs do not hold.",
    remediation="Set use_identity_as_username true (or use_subject_as_username) on mTLS listeners.",
    effort="S",
    needs=("broker",),
    controls=("C2", "C8"),
    task="segmentation",
    scope="file",
)
def transport_identity_not_bound(ev: Evidence) -> Iterator[Result]:
    for b, listener in _listeners(ev):
        if mtls(listener):
            yield status(listener.use_identity_as_username, _res(b, listener), "not bound")


@check(
    title="MQTT over plain WebSockets",
    severity="medium",
    rationale="Browser and app interfaces on plain WebSockets expose the ecosystem interface "
    "without transport security.",
    remediation="Serve WebSockets behind TLS (wss) only.",
    effort="S",
    needs=("broker",),
    controls=("C2",),
    owasp=("I3",),
    task="mtls_everywhere",
    scope="file",
)
def transport_websockets_plain(ev: Evidence) -> Iterator[Result]:
    for b, listener in _listeners(ev):
        if listener.protocol == "websockets":
            yield status(listener.tls, _res(b, listener), "ws:// without TLS")


@check(
    title="Device on a public APN while the broker lacks mutual TLS",
    severity="critical",
    rationale="On a public APN the broker is reachable from the internet; without mutual "
    "TLS nothing authenticates the devices (mistake M3).",
    remediation="Require client certificates on every network-facing listener; move devices "
    "to a private APN with VPN.",
    effort="M",
    needs=("inventory", "broker"),
    controls=("C2", "C3"),
    mistakes=("M3",),
    task="mtls_everywhere",
    likelihood=8.0,
    impact=8.0,
)
def transport_public_apn_without_mtls(ev: Evidence) -> Iterator[Result]:
    open_listener = any(not mtls(lst) for _, lst in _listeners(ev))

    def test(d: Device) -> Result | None:
        if d.apn != "public":
            return status(True, d.id) if d.apn == "private" else None
        return status(not open_listener, d.id, "public APN, broker without mTLS")

    yield from device_checks(ev, test)
