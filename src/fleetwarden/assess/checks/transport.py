"""C2 mutual TLS at the broker, M3 public APN without mutual TLS, and the live TLS probe."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from fleetwarden.assess.checks import check
from fleetwarden.assess.checks._util import device_checks, status
from fleetwarden.assess.evidence import Evidence
from fleetwarden.assess.evidence.types import Broker, Device, Listener, TlsProbe
from fleetwarden.assess.model import MANUAL, Result

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


# --- live TLS probe (evidence/probe.py, --probe-tls): results per probed endpoint ---


def _probes(ev: Evidence, test: Callable[[TlsProbe], Result]) -> Iterator[Result]:
    """Run ``test`` on every probed endpoint; an unprobed one is MANUAL, never FAIL."""
    for p in ev.tls_probes:
        if not p.reachable:
            yield MANUAL(p.endpoint, p.error or "not probed")
        else:
            yield test(p)


@check(
    title="Probed TLS endpoint does not require a client certificate",
    severity="high",
    rationale="The live probe completed a TLS session without presenting any client "
    "certificate: the endpoint authenticates itself but not the device (no mutual TLS); "
    "on a device-facing endpoint this is mistake M3's open door.",
    remediation="Require client certificates issued by the device CA on this endpoint "
    "(mosquitto: require_certificate true; OpenSSL: SSL_VERIFY_PEER | "
    "SSL_VERIFY_FAIL_IF_NO_PEER_CERT).",
    effort="M",
    needs=("tls_probe",),
    controls=("C2",),
    mistakes=("M3",),
    owasp=("I3", "I7"),
    etsi=("5.5-1", "5.5-5"),
    cra=("I(d)", "I(e)", "I(f)"),
    nistir=("LA", "DP"),
    task="mtls_everywhere",
    scope="fleet",
)
def transport_probe_client_cert_not_required(ev: Evidence) -> Iterator[Result]:
    def test(p: TlsProbe) -> Result:
        if p.client_cert == "unknown":
            return MANUAL(p.endpoint, "; ".join(p.notes) or "client authentication undetermined")
        return status(p.client_cert == "required", p.endpoint, "no client certificate needed")

    yield from _probes(ev, test)


@check(
    title="Probed TLS endpoint accepts TLS 1.0 or 1.1",
    severity="medium",
    rationale="TLS 1.0 and 1.1 are deprecated (RFC 8996); the live probe completed a "
    "handshake with one of them.",
    remediation="Set the endpoint's minimum protocol version to TLS 1.2 (mosquitto: "
    "tls_version tlsv1.2).",
    effort="S",
    needs=("tls_probe",),
    controls=("C2",),
    owasp=("I7",),
    etsi=("5.5-1",),
    cra=("I(e)", "I(f)"),
    nistir=("DP",),
    task="mtls_everywhere",
    scope="fleet",
)
def transport_probe_old_tls_accepted(ev: Evidence) -> Iterator[Result]:
    def test(p: TlsProbe) -> Result:
        old = [v for v in ("TLSv1.0", "TLSv1.1") if p.versions.get(v) == "accepted"]
        if old:
            return status(False, p.endpoint, f"accepts {', '.join(old)}")
        unknown = [v for v in ("TLSv1.0", "TLSv1.1") if p.versions.get(v) != "refused"]
        if unknown:
            return MANUAL(
                p.endpoint, f"not determined (local OpenSSL or error): {', '.join(unknown)}"
            )
        return status(True, p.endpoint)

    yield from _probes(ev, test)


@check(
    title="Probed TLS endpoint accepts weak cipher suites",
    severity="medium",
    rationale="NULL, export, RC4, DES/3DES and anonymous (unauthenticated) DH/ECDH suites "
    "are broken; the live probe negotiated one of them on TLS 1.2.",
    remediation="Restrict the endpoint's cipher list to AEAD suites with ECDHE (or leave "
    "the OpenSSL default).",
    effort="S",
    needs=("tls_probe",),
    controls=("C2",),
    owasp=("I7",),
    etsi=("5.5-1",),
    cra=("I(e)", "I(f)"),
    nistir=("DP",),
    task="mtls_everywhere",
    scope="fleet",
)
def transport_probe_weak_ciphers_accepted(ev: Evidence) -> Iterator[Result]:
    def test(p: TlsProbe) -> Result:
        weak = [f for f, r in p.weak_ciphers.items() if r.startswith("accepted")]
        if weak:
            return status(False, p.endpoint, f"accepts {', '.join(weak)}")
        if p.versions.get("TLSv1.2") != "accepted":
            return status(True, p.endpoint)  # no TLS 1.2 at all: nothing weak to offer
        if all(r == "error" for r in p.weak_ciphers.values()):
            return MANUAL(p.endpoint, "weak-suite handshakes failed with network errors")
        return status(True, p.endpoint)

    yield from _probes(ev, test)


@check(
    title="Probed TLS endpoint serves a bad certificate",
    severity="high",
    rationale="An expired or not-yet-valid certificate, an RSA key under 2048 bits (EC under "
    "256), or an MD5/SHA-1 signature lets devices either fail to connect or be taught to "
    "accept anything.",
    remediation="Reissue the endpoint certificate from the fleet CA: RSA >= 2048 or EC "
    "P-256, SHA-256 signature, and renew it before it expires.",
    effort="S",
    needs=("tls_probe",),
    controls=("C2",),
    owasp=("I3", "I7"),
    etsi=("5.5-1",),
    cra=("I(d)", "I(e)"),
    nistir=("DP",),
    task="mtls_everywhere",
    scope="fleet",
)
def transport_probe_certificate_invalid(ev: Evidence) -> Iterator[Result]:
    def test(p: TlsProbe) -> Result:
        c = p.certificate
        if c is None:
            return MANUAL(p.endpoint, "server certificate not read")
        if c.error:
            return MANUAL(p.endpoint, c.error)
        bad = []
        if c.expired:
            bad.append(f"expired {-c.days_left} days ago")
        if c.not_yet_valid:
            bad.append("not yet valid")
        rsa_like = c.key_type in {"RSA", "DSA"}
        if (rsa_like and c.key_bits < 2048) or (not rsa_like and 0 < c.key_bits < 256):
            bad.append(f"{c.key_type} {c.key_bits}-bit key")
        if c.weak_signature:
            bad.append(f"{c.signature_hash} signature")
        if bad and c.self_signed:
            bad.append("self-signed")
        return status(not bad, p.endpoint, ", ".join(bad))

    yield from _probes(ev, test)
