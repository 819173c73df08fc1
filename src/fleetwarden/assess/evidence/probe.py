"""Live TLS probe of listed endpoints (``--probe-tls``; off by default).

Built on the standard library :mod:`ssl` plus ``cryptography`` rather than sslyze: sslyze
pins ``cryptography<47`` and the project runs cryptography 50 (see docs/assess.md).

For each ``host:port`` it records which protocol versions the server accepts (TLS 1.0 to
1.3), which weak TLS 1.2 cipher families it accepts, whether it requires a client
certificate, and the server certificate (read with verification off, parsed with
``cryptography``).

Invariants:
- endpoints are parsed strictly (``host:port``, ``[v6]:port``; port 1-65535) and capped
  at :data:`MAX_ENDPOINTS`; a bad one is recorded as an error, never raised;
- every connection has a timeout (:data:`TIMEOUT` seconds); a network or TLS error is
  recorded in the :class:`~.types.TlsProbe`, never raised;
- a version or cipher family the local OpenSSL cannot offer is ``unknown``, never
  ``refused``; an outcome the probe cannot tell apart is ``unknown`` too, so a check
  never FAILs on a guess;
- nothing is sent beyond TLS handshakes (and, for TLS 1.3, one read waiting for the
  server's certificate-required alert).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
import warnings
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from fleetwarden.assess.evidence.types import ProbeCert, TlsProbe

if TYPE_CHECKING:
    from fleetwarden.assess.evidence import Evidence

TIMEOUT = 3.0
#: the TLS 1.3 read waiting for a certificate-required alert: a server that accepted the
#: connection simply waits for the application protocol (MQTT CONNECT)
ALERT_WAIT = 1.0
MAX_ENDPOINTS = 64

VERSIONS: dict[str, ssl.TLSVersion] = {
    "TLSv1.0": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}
_HAS = {
    "TLSv1.0": ssl.HAS_TLSv1,
    "TLSv1.1": ssl.HAS_TLSv1_1,
    "TLSv1.2": ssl.HAS_TLSv1_2,
    "TLSv1.3": ssl.HAS_TLSv1_3,
}

#: weak TLS 1.2 cipher families, as OpenSSL cipher strings. CBC suites with SHA-1 MACs
#: are NOT classed weak here: they are still negotiable under current guidance (e.g.
#: BSI TR-02102 lists none of them as broken); RFC 7525/9325 deprecate the rest.
WEAK_CIPHERS: dict[str, str] = {
    "NULL": "eNULL",
    "EXPORT": "EXP",
    "RC4": "RC4",
    "3DES": "3DES",
    "DES": "DES:!3DES",
    "anonymous DH/ECDH": "aNULL:!eNULL",
}

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?$")
_WEAK_HASHES = {"md5", "sha1", "md2", "md4"}

#: OpenSSL reasons meaning "the server refused this protocol version"
_VERSION_REFUSED = {
    "TLSV1_ALERT_PROTOCOL_VERSION",
    "UNSUPPORTED_PROTOCOL",
    "WRONG_VERSION_NUMBER",
    "TLSV1_ALERT_INAPPROPRIATE_FALLBACK",
}
_CERT_REQUIRED = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    "SSLV3_ALERT_HANDSHAKE_FAILURE",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE",
    "SSLV3_ALERT_BAD_CERTIFICATE",
}


def parse_endpoint(text: str) -> tuple[str, int]:
    """``host:port`` or ``[ipv6]:port`` -> (host, port); ValueError when malformed."""
    s = text.strip()
    if not s or len(s) > 300:
        raise ValueError("endpoint must be host:port")
    if s.startswith("["):
        m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})", s)
        if not m:
            raise ValueError(f"bad endpoint {s[:80]!r}: use [ipv6]:port")
        host, port_s = m.group(1), m.group(2)
        ipaddress.IPv6Address(host)  # raises ValueError
    else:
        host, sep, port_s = s.rpartition(":")
        if not sep or not host or ":" in host:
            raise ValueError(f"bad endpoint {s[:80]!r}: use host:port ([ipv6]:port for IPv6)")
        if not port_s.isdigit():
            raise ValueError(f"bad port in {s[:80]!r}")
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            if not _HOST.fullmatch(host) or host.replace(".", "").isdigit():
                raise ValueError(f"bad host in {s[:80]!r}") from None
    port = int(port_s)
    if not 1 <= port <= 65535:
        raise ValueError(f"port out of range in {s[:80]!r}")
    return host, port


def _context(version: ssl.TLSVersion | None, ciphers: str = "ALL:@SECLEVEL=0") -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the certificate is read, not trusted
    # SECLEVEL=0 lets the client side offer legacy versions and suites at all
    ctx.set_ciphers(ciphers)
    if version is not None:
        with warnings.catch_warnings():
            # offering deprecated versions is the point of the probe
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = version
            ctx.maximum_version = version
    else:
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    return ctx


class _Seen:
    """Handshake messages received, via the (private, stable since 3.8) msg_callback."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.server_hello = False
        self.cert_request = False
        #: the server's leaf certificate from its Certificate message, for handshakes that
        #: fail later (TLS 1.2 with a client certificate required) where getpeercert cannot
        self.der: bytes | None = None
        if hasattr(ctx, "_msg_callback"):
            ctx._msg_callback = self._cb

    def _cb(
        self, conn: Any, direction: str, version: Any, ctype: Any, mtype: Any, data: Any
    ) -> None:
        if direction != "read" or getattr(ctype, "name", "") != "HANDSHAKE":
            return
        name = getattr(mtype, "name", "")
        if name == "SERVER_HELLO":
            self.server_hello = True
        elif name == "CERTIFICATE_REQUEST":
            self.cert_request = True
        elif name == "CERTIFICATE" and self.der is None and isinstance(data, bytes):
            self.der = _leaf(data, tls13=getattr(version, "name", "") == "TLSv1_3")


def _leaf(msg: bytes, *, tls13: bool) -> bytes | None:
    """The first certificate of a Certificate handshake message (RFC 5246 7.4.2 /
    RFC 8446 4.4.2): type(1) length(3) [context(1+n) in 1.3] list(3) cert(3) DER."""
    i = 4
    if tls13:
        if len(msg) < 5:
            return None
        i += 1 + msg[4]
    i += 3  # certificate_list length
    if len(msg) < i + 3:
        return None
    n = int.from_bytes(msg[i : i + 3], "big")
    der = msg[i + 3 : i + 3 + n]
    return der if n and len(der) == n else None


class _Attempt:
    def __init__(self) -> None:
        self.ok = False
        self.reason = ""  # OpenSSL reason or error text
        self.network_error = ""
        self.der: bytes | None = None
        self.version = ""
        self.cipher = ""
        self.cert_required = False  # TLS 1.3: alert on first read
        self.seen: _Seen | None = None


def _attempt(host: str, port: int, ctx: ssl.SSLContext, *, read_alert: bool = False) -> _Attempt:
    a = _Attempt()
    a.seen = _Seen(ctx)
    try:
        raw = socket.create_connection((host, port), timeout=TIMEOUT)
    except OSError as exc:
        a.network_error = f"{type(exc).__name__}: {exc.strerror or exc}"[:200]
        return a
    try:
        with ctx.wrap_socket(raw, server_hostname=None if _is_ip(host) else host) as tls:
            a.ok = True
            a.der = tls.getpeercert(binary_form=True)
            a.version = tls.version() or ""
            c = tls.cipher()
            a.cipher = c[0] if c else ""
            if read_alert and a.version == "TLSv1.3":
                tls.settimeout(ALERT_WAIT)
                try:
                    tls.recv(1)
                except ssl.SSLError as exc:
                    a.reason = exc.reason or str(exc)
                    a.cert_required = a.reason in _CERT_REQUIRED
                except (TimeoutError, OSError):
                    pass  # the server accepted the connection and waits for us
    except ssl.SSLError as exc:
        a.ok = False
        a.reason = exc.reason or type(exc).__name__
    except OSError as exc:  # reset or timeout during the handshake
        a.ok = False
        a.reason = f"{type(exc).__name__}"
    finally:
        raw.close()
    if a.der is None and a.seen is not None and a.seen.der is not None:
        a.der = a.seen.der
    return a


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _version_result(a: _Attempt) -> str:
    if a.ok:
        return "accepted"
    if a.reason == "NO_PROTOCOLS_AVAILABLE":
        return "unknown"  # the local OpenSSL cannot offer it
    if a.reason in _VERSION_REFUSED:
        return "refused"
    if a.seen is not None and a.seen.server_hello:
        # the server answered this version and failed later (client certificate)
        return "accepted"
    if a.seen is not None and hasattr(ssl.SSLContext, "_msg_callback"):
        return "refused"  # no ServerHello: the server would not speak this version
    return "unknown"


def probe(endpoint: str, now: datetime | None = None) -> TlsProbe:
    """Probe one endpoint; every failure is recorded in the result."""
    now = now or datetime.now(UTC)
    try:
        host, port = parse_endpoint(endpoint)
    except ValueError as exc:
        return TlsProbe(endpoint=endpoint[:300], error=str(exc))
    p = TlsProbe(endpoint=endpoint.strip())
    # reachability first: one plain TCP connect, so a closed port costs one timeout
    try:
        socket.create_connection((host, port), timeout=TIMEOUT).close()
    except OSError as exc:
        p.error = f"unreachable: {type(exc).__name__}: {exc.strerror or exc}"[:300]
        return p
    p.reachable = True
    for name, v in VERSIONS.items():
        if not _HAS[name]:
            p.versions[name] = "unknown"
            continue
        try:
            ctx = _context(v)
        except (ValueError, ssl.SSLError):
            p.versions[name] = "unknown"
            continue
        a = _attempt(host, port, ctx)
        p.versions[name] = "error" if a.network_error else _version_result(a)
        if a.der and p.certificate is None:
            p.certificate = parse_cert(a.der, now)
    # client certificate: the best the server offers, no client certificate
    a = _attempt(host, port, _context(None), read_alert=True)
    if a.network_error:
        p.client_cert = "unknown"
    elif a.ok and not a.cert_required:
        p.client_cert = "not required"
    elif a.cert_required or (a.seen is not None and a.seen.cert_request):
        p.client_cert = "required"
    else:
        p.client_cert = "unknown"
        p.notes.append(f"handshake without client certificate failed: {a.reason}")
    if a.der and p.certificate is None:
        p.certificate = parse_cert(a.der, now)
    if a.seen is not None and a.seen.cert_request:
        p.notes.append("server requests a client certificate")
    # weak TLS 1.2 cipher families
    for family, spec in WEAK_CIPHERS.items():
        try:
            ctx = _context(ssl.TLSVersion.TLSv1_2, f"{spec}:@SECLEVEL=0")
        except (ValueError, ssl.SSLError):
            p.weak_ciphers[family] = "unknown"  # the local OpenSSL has none of them
            continue
        w = _attempt(host, port, ctx)
        if w.ok:
            p.weak_ciphers[family] = f"accepted ({w.cipher})"
        elif w.seen is not None and w.seen.server_hello:
            p.weak_ciphers[family] = "accepted (handshake then client-certificate failure)"
        elif w.network_error:
            p.weak_ciphers[family] = "error"
        elif hasattr(ssl.SSLContext, "_msg_callback"):
            p.weak_ciphers[family] = "refused"
        else:
            p.weak_ciphers[family] = "unknown"
    return p


def parse_cert(der: bytes, now: datetime) -> ProbeCert:
    """The server certificate's facts the checks need (never raises)."""
    try:
        c = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        return ProbeCert(error=f"unparsable certificate: {exc}"[:200])
    key = c.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        ktype, bits = "RSA", key.key_size
    elif isinstance(key, ec.EllipticCurvePublicKey):
        ktype, bits = f"EC {key.curve.name}", key.curve.key_size
    elif isinstance(key, dsa.DSAPublicKey):
        ktype, bits = "DSA", key.key_size
    elif isinstance(key, ed25519.Ed25519PublicKey):
        ktype, bits = "Ed25519", 256
    elif isinstance(key, ed448.Ed448PublicKey):
        ktype, bits = "Ed448", 448
    else:
        ktype, bits = type(key).__name__, 0
    try:
        h = c.signature_hash_algorithm
        sig_hash = h.name if h is not None else "none"
    except Exception:  # unsupported algorithm: name it by OID
        sig_hash = c.signature_algorithm_oid.dotted_string
    nb, na = c.not_valid_before_utc, c.not_valid_after_utc
    return ProbeCert(
        subject=c.subject.rfc4514_string()[:300],
        issuer=c.issuer.rfc4514_string()[:300],
        not_before=nb,
        not_after=na,
        expired=now > na,
        not_yet_valid=now < nb,
        days_left=int((na - now).total_seconds() // 86400),
        self_signed=c.subject == c.issuer,
        key_type=ktype,
        key_bits=bits,
        signature_hash=sig_hash,
        weak_signature=sig_hash.lower() in _WEAK_HASHES,
    )


def probe_all(
    endpoints: list[str], now: datetime | None = None
) -> tuple[list[TlsProbe], list[str]]:
    """Probe up to :data:`MAX_ENDPOINTS` distinct endpoints, in order; notes for the rest."""
    seen: list[str] = []
    for e in endpoints:
        if e.strip() not in seen:
            seen.append(e.strip())
    notes = []
    if len(seen) > MAX_ENDPOINTS:
        notes.append(f"probe: {len(seen) - MAX_ENDPOINTS} endpoints over the cap of "
                     f"{MAX_ENDPOINTS} not probed")  # fmt: skip
    return [probe(e, now) for e in seen[:MAX_ENDPOINTS]], notes


def collect_probes(ev: Evidence, endpoints: list[str]) -> Evidence:
    """Probe ``endpoints`` into ``ev`` (kind ``tls_probe``, present once anything was asked)."""
    if not endpoints:
        return ev
    probes, notes = probe_all(endpoints, ev.now)
    ev.tls_probes.extend(probes)
    ev.notes.extend(notes)
    down = sum(1 for p in probes if not p.reachable)
    ev.notes.append(f"probe: {len(probes)} TLS endpoints probed, {down} not reachable or invalid")
    ev.present.add("tls_probe")
    return ev
