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

Invariants: every refusal (size, content type, base64, CSR, authentication, policy) is
answered with a 4xx and recorded as an event; the request body is read up to the EST
size limit and never beyond.
"""

from __future__ import annotations

import base64
import binascii
import logging

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from fleetwarden.errors import Error, NotFoundError
from fleetwarden.identity.errors import EnrollmentAuthError, EnrollmentRefused
from fleetwarden.identity.service import CertAuth, EnrollAuth, IdentityService, Issued, TokenAuth

log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=True, tags=["est"])

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


class EstError(Error):
    """An EST protocol-level refusal (size, media type, encoding)."""


def _text(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(message + "\n", status_code=status, media_type="text/plain", headers=headers)


def _b64(body: bytes) -> Response:
    return Response(
        base64.b64encode(body),
        media_type=PKCS7,
        headers={"Content-Transfer-Encoding": "base64"},
    )


def _service(request: Request) -> IdentityService | None:
    return getattr(request.app.state, "identity", None)


def _client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def _check_label(label: str | None) -> None:
    if label is not None and label not in LABELS:
        raise NotFoundError(f"unknown EST label {label!r}")


def peer_certificate(request: Request) -> x509.Certificate | None:
    tls = request.scope.get("extensions", {}).get("tls")
    if not tls:
        return None
    chain = tls.get("client_cert_chain") or []
    if not chain:
        return None
    return x509.load_pem_x509_certificate(chain[0].encode())


def _basic(request: Request) -> TokenAuth | None:
    header = request.headers.get("authorization")
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


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _Refusal(413, f"request body over the {limit}-byte EST limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _Refusal(413, f"request body over the {limit}-byte EST limit")
        chunks.append(chunk)
    return b"".join(chunks)


class _Refusal(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


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
CSR_ATTRS_B64 = base64.b64encode(CSR_ATTRS)


@router.get("/.well-known/est/cacerts")
@router.get("/.well-known/est/{label}/cacerts")
async def cacerts(request: Request, label: str | None = None) -> Response:
    _check_label(label)
    svc = _service(request)
    if svc is None:
        return _text(503, "the fleet CA is not initialised")
    return Response(
        _cacerts.body(svc),
        media_type=PKCS7,
        headers={"Content-Transfer-Encoding": "base64"},
    )


@router.get("/.well-known/est/csrattrs")
@router.get("/.well-known/est/{label}/csrattrs")
async def csrattrs(label: str | None = None) -> Response:
    _check_label(label)
    return Response(
        CSR_ATTRS_B64,
        media_type="application/csrattrs",
        headers={"Content-Transfer-Encoding": "base64"},
    )


_FIXED_GETS = {
    f"/.well-known/est/{label}{name}": name
    for label in ("", *(f"{x}/" for x in LABELS))
    for name in ("cacerts", "csrattrs")
}


def _has_body(scope: Scope) -> bool:
    """A GET that declares a body goes the normal way (size limit, body handling)."""
    for key, value in scope["headers"]:
        if key == b"transfer-encoding" or (key == b"content-length" and value != b"0"):
            return True
    return False


class EstFixedResponses:
    """ASGI layer in front of the framework for the two EST answers that are the same
    for every client: ``GET cacerts`` and ``GET csrattrs`` (with or without a known
    label). A device asks both before every enrolment; through the framework each
    cost as much as the routing and middleware stack, here a dict look-up and a
    cached body. They need no authentication and read no body; anything else (other
    methods, a declared body, unknown labels, no fleet CA yet) goes on to the routes above,
    which give the same answers and the refusals."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            name = _FIXED_GETS.get(scope["path"])
            if name is not None and not _has_body(scope):
                body: bytes | None
                if name == "csrattrs":
                    body, ctype = CSR_ATTRS_B64, b"application/csrattrs"
                else:
                    app = scope.get("app")
                    svc = getattr(getattr(app, "state", None), "identity", None)
                    body = _cacerts.body(svc) if svc is not None else None
                    ctype = PKCS7.encode()
                if body is not None:
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 200,
                            "headers": [
                                (b"content-length", str(len(body)).encode()),
                                (b"content-type", ctype),
                                (b"content-transfer-encoding", b"base64"),
                            ],
                        }
                    )
                    await send({"type": "http.response.body", "body": body})
                    return
        await self.app(scope, receive, send)


@router.post("/.well-known/est/simpleenroll")
@router.post("/.well-known/est/{label}/simpleenroll")
async def simpleenroll(request: Request, label: str | None = None) -> Response:
    _check_label(label)
    return await _enroll(request, reenroll=False)


@router.post("/.well-known/est/simplereenroll")
@router.post("/.well-known/est/{label}/simplereenroll")
async def simplereenroll(request: Request, label: str | None = None) -> Response:
    _check_label(label)
    return await _enroll(request, reenroll=True)


async def _enroll(request: Request, *, reenroll: bool) -> Response:
    svc = _service(request)
    if svc is None:
        return _text(503, "the fleet CA is not initialised")
    operation = "simplereenroll" if reenroll else "simpleenroll"
    ip = _client_ip(request)
    auth: EnrollAuth | None = None
    try:
        try:
            basic = _basic(request)
        except EnrollmentAuthError as exc:
            raise _Refusal(401, str(exc)) from exc
        cert = peer_certificate(request)
        # A client certificate wins over Basic: it is the stronger credential.
        auth = CertAuth(cert) if cert is not None else basic
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/pkcs10":
            raise _Refusal(415, f"Content-Type must be application/pkcs10, not {ctype or 'none'!r}")
        body = await _read_body(request, svc.settings.est_max_body_bytes)
        der = decode_base64_der(body)
    except _Refusal as exc:
        who = auth.device_id if isinstance(auth, TokenAuth) else None
        await run_in_threadpool(svc.refuse, exc, device_id=who, src_ip=ip, operation=operation)
        return _text(exc.status, str(exc), _auth_header(exc.status))
    try:
        result = await run_in_threadpool(svc.enroll, der, auth, reenroll=reenroll, src_ip=ip)
    except (EnrollmentRefused, EnrollmentAuthError, NotFoundError) as exc:
        status = exc.http_status if exc.http_status != 404 else 403
        return _text(status, str(exc), _auth_header(status))
    if not isinstance(result, Issued):
        return _text(
            202,
            f"enrolment request {result.request_id} waits for approval",
            {"Retry-After": str(result.retry_after)},
        )
    return _b64(pkcs7.serialize_certificates([result.cert], serialization.Encoding.DER))


def _auth_header(status: int) -> dict[str, str] | None:
    return {"WWW-Authenticate": 'Basic realm="fleetwarden EST"'} if status == 401 else None


@router.get("/crl/{name}.crl", include_in_schema=False)
async def crl(request: Request, name: str) -> Response:
    svc = _service(request)
    if svc is None:
        return _text(503, "the fleet CA is not initialised")
    issuer = next((c for c in svc.ca.issuers if c.crl_name == name), None)
    if issuer is None:
        return _text(404, "no such CRL")
    try:
        data = await run_in_threadpool(issuer.crl_file.read_bytes)
    except OSError:
        return _text(503, "no CRL yet")
    return Response(data, media_type="application/pkix-crl")
