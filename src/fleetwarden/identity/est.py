"""EST server (RFC 7030 with the RFC 8951 clarifications) under ``/.well-known/est/``.

Endpoints: ``cacerts``, ``simpleenroll``, ``simplereenroll``, ``csrattrs``, each also
under one optional label per profile (``/.well-known/est/device/...``).

Wire format: bodies are base64 of DER (whitespace tolerated, any
Content-Transfer-Encoding header accepted, RFC 8951 section 3.1); responses are
PKCS#7 certs-only (``application/pkcs7-mime; smime-type=certs-only``), base64.
Errors are ``text/plain`` with the reason (RFC 7030 section 4.2.3).

Authentication (done here, not by API tokens): HTTP Basic (device id + one-time
enrolment token) over TLS, or the TLS client certificate taken from the ASGI ``tls``
scope extension (see ``identity.tls``): a factory certificate for the first enrolment,
the current fleet certificate for re-enrolment.

Served by :class:`EstEndpoint`, a plain ASGI layer in front of the admin API's
framework: EST is a fixed wire protocol (no JSON, no OpenAPI, no API tokens), and the
framework's routing and middleware stack cost more per request than a ``cacerts``
answer. Enrolments go through the group commit of :mod:`fleetwarden.identity.batching`.

Invariants: every refusal (size, content type, base64, CSR, authentication, policy) is
answered with a 4xx and recorded as an event; the request body is read up to the EST
size limit and never beyond; an unexpected error is a 500 with no detail, logged, and
never a half-written enrolment.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from fleetwarden.errors import NotFoundError
from fleetwarden.identity.batching import EnrollBatcher
from fleetwarden.identity.errors import EnrollmentAuthError, EnrollmentRefused
from fleetwarden.identity.service import (
    CertAuth,
    EnrollAuth,
    EnrollmentRequest,
    IdentityService,
    Issued,
    TokenAuth,
)

log = logging.getLogger(__name__)

#: the admin API's routes of this module (the CRL also on the API port); EST itself is
#: :class:`EstEndpoint`
router = APIRouter(include_in_schema=False, tags=["est"])

PREFIX = "/.well-known/est/"
LABELS = {"device"}
PKCS7 = "application/pkcs7-mime; smime-type=certs-only"
# CsrAttrs ::= SEQUENCE { ecdsa-with-SHA256, id-ecPublicKey, secp256r1 }: what we want
# devices to send (RFC 7030 section 4.5.2).
CSR_ATTRS = bytes.fromhex(
    "3019"
    "06082a8648ce3d040302"  # ecdsa-with-SHA256
    "06072a8648ce3d0201"  # id-ecPublicKey
    "06082a8648ce3d030107"  # secp256r1
)
CSR_ATTRS_B64 = base64.b64encode(CSR_ATTRS)
#: operation -> the one method it answers
OPERATIONS = {
    "cacerts": "GET",
    "csrattrs": "GET",
    "simpleenroll": "POST",
    "simplereenroll": "POST",
}

_Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


class _Refusal(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _text(status: int, message: str, extra: dict[str, str] | None = None) -> _Answer:
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    headers += [(k.lower().encode(), v.encode()) for k, v in (extra or {}).items()]
    return status, headers, (message + "\n").encode()


def _b64(body: bytes, ctype: str) -> _Answer:
    headers = [(b"content-type", ctype.encode()), (b"content-transfer-encoding", b"base64")]
    return 200, headers, body


def _auth_header(status: int) -> dict[str, str] | None:
    return {"WWW-Authenticate": 'Basic realm="fleetwarden EST"'} if status == 401 else None


def _tls_client_cert(scope: Scope) -> x509.Certificate | None:
    tls = scope.get("extensions", {}).get("tls")
    if not tls:
        return None
    chain = tls.get("client_cert_chain") or []
    if not chain:
        return None
    return x509.load_pem_x509_certificate(chain[0].encode())


def peer_certificate(request: Request) -> x509.Certificate | None:
    """The TLS client certificate of ``request`` (verified by the TLS layer), if any."""
    return _tls_client_cert(request.scope)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _basic(scope: Scope) -> TokenAuth | None:
    header = _header(scope, b"authorization")
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        raw = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise EnrollmentAuthError("malformed HTTP Basic credentials") from exc
    user, sep, password = raw.partition(":")
    if not sep or not user or not password:
        raise EnrollmentAuthError("HTTP Basic needs device id and token")
    return TokenAuth(device_id=user, secret=password)


class _Disconnected(Exception):
    """The client went away before its request body was complete."""


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body, refused (413) as soon as it would pass ``limit`` bytes, by
    its declared length or by what arrives."""
    declared = _header(scope, b"content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise _Refusal(413, f"request body over the {limit}-byte EST limit")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _Refusal(413, f"request body over the {limit}-byte EST limit")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def decode_base64_der(body: bytes) -> bytes:
    """Base64 (with line breaks or other whitespace) to DER; refuses anything else."""
    compact = b"".join(body.split())
    if not compact:
        raise _Refusal(400, "empty body: expected a base64 PKCS#10 request")
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _Refusal(400, "the body is not valid base64") from exc


class _CacertsCache:
    """The ``cacerts`` body, rebuilt only when the set of trusted CA certificates
    changes (a rollover, a retired CA dropped). The key is the certificate objects
    themselves, compared by identity: the CA objects are replaced or their lists
    mutated on those changes, never the certificates in place."""

    def __init__(self) -> None:
        self._certs: tuple[x509.Certificate, ...] = ()
        self._body = b""

    def body(self, svc: IdentityService) -> bytes:
        # Every accepted issuing CA (after a rollover the retired one too, while devices
        # still hold its certificates) and the root (RFC 7030 section 4.1.3).
        trusted = svc.ca.trusted
        certs = self._certs
        same = len(certs) == len(trusted) and all(
            a is b for a, b in zip(certs, trusted, strict=True)
        )
        if not same:
            der = pkcs7.serialize_certificates(trusted, serialization.Encoding.DER)
            self._body = base64.b64encode(der)
            self._certs = tuple(trusted)
        return self._body


_cacerts = _CacertsCache()


def _enroller(state: Any, svc: IdentityService) -> EnrollBatcher:
    """The process's EST group commit for ``svc`` (made on first use)."""
    batcher: EnrollBatcher | None = getattr(state, "est_enroller", None)
    if batcher is None or batcher.service is not svc:
        batcher = state.est_enroller = EnrollBatcher(svc)
    return batcher


class EstEndpoint:
    """ASGI layer serving everything under ``/.well-known/est/``; other paths go on to
    the admin API. Reads ``app.state.identity`` (the :class:`IdentityService`, absent
    until the fleet CA exists: 503) of the application it wraps."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        try:
            answer = await self._answer(scope, receive)
        except _Disconnected:
            return
        except Exception:  # never a traceback to a device; the log has it
            log.exception("EST request failed")
            answer = _text(500, "internal error: nothing was issued")
        status, headers, body = answer
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, scope: Scope, receive: Receive) -> _Answer:
        parts = scope["path"][len(PREFIX) :].split("/")
        if len(parts) == 2 and parts[0] not in LABELS:
            return _text(404, f"unknown EST label {parts[0][:64]!r}")
        op = parts[-1] if len(parts) <= 2 else ""
        method = OPERATIONS.get(op)
        if method is None:
            return _text(404, "no such EST operation")
        if scope["method"] != method:
            return _text(405, f"{op} takes {method}", {"Allow": method})
        app = scope.get("app")
        state = getattr(app, "state", None)
        svc: IdentityService | None = getattr(state, "identity", None)
        if op == "csrattrs":
            return _b64(CSR_ATTRS_B64, "application/csrattrs")
        if svc is None:
            return _text(503, "the fleet CA is not initialised")
        if op == "cacerts":
            return _b64(_cacerts.body(svc), PKCS7)
        return await self._enroll(scope, receive, svc, state, reenroll=op == "simplereenroll")

    async def _enroll(
        self, scope: Scope, receive: Receive, svc: IdentityService, state: Any, *, reenroll: bool
    ) -> _Answer:
        operation = "simplereenroll" if reenroll else "simpleenroll"
        client = scope.get("client")
        ip = client[0] if client else None
        auth: EnrollAuth | None = None
        try:
            try:
                basic = _basic(scope)
            except EnrollmentAuthError as exc:
                raise _Refusal(401, str(exc)) from exc
            cert = _tls_client_cert(scope)
            # A client certificate wins over Basic: it is the stronger credential.
            auth = CertAuth(cert) if cert is not None else basic
            ctype = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
            if ctype != "application/pkcs10":
                raise _Refusal(
                    415, f"Content-Type must be application/pkcs10, not {ctype[:64] or 'none'!r}"
                )
            der = decode_base64_der(
                await _read_body(scope, receive, svc.settings.est_max_body_bytes)
            )
        except _Refusal as exc:
            who = auth.device_id if isinstance(auth, TokenAuth) else None
            await run_in_threadpool(svc.refuse, exc, device_id=who, src_ip=ip, operation=operation)
            return _text(exc.status, str(exc), _auth_header(exc.status))
        request = EnrollmentRequest(der, auth, reenroll, ip)
        result = await _enroller(state, svc).submit(request)
        if isinstance(result, EnrollmentRefused | EnrollmentAuthError | NotFoundError):
            status = result.http_status if result.http_status != 404 else 403
            return _text(status, str(result), _auth_header(status))
        if isinstance(result, Exception):
            log.error("EST %s failed: %s", operation, type(result).__name__)
            return _text(500, "internal error: nothing was issued")
        if not isinstance(result, Issued):
            return _text(
                202,
                f"enrolment request {result.request_id} waits for approval",
                {"Retry-After": str(result.retry_after)},
            )
        der_out = pkcs7.serialize_certificates([result.cert], serialization.Encoding.DER)
        return _b64(base64.b64encode(der_out), PKCS7)


@router.get("/crl/{name}.crl")
async def crl(request: Request, name: str) -> Response:
    svc: IdentityService | None = getattr(request.app.state, "identity", None)
    if svc is None:
        return Response("the fleet CA is not initialised\n", 503, media_type="text/plain")
    issuer = next((c for c in svc.ca.issuers if c.crl_name == name), None)
    if issuer is None:
        return Response("no such CRL\n", 404, media_type="text/plain")
    try:
        data = await run_in_threadpool(issuer.crl_file.read_bytes)
    except OSError:
        return Response("no CRL yet\n", 503, media_type="text/plain")
    return Response(data, media_type="application/pkix-crl")
