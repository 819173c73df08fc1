"""The identity control inside ``fleetwarden up``: EST service, CRL upkeep and serving.

On start (when the fleet CA exists) it loads the CA, attaches the
:class:`IdentityService` to the API app (the EST routes use it), writes a fresh CRL and
starts a plain-HTTP server for the CRL distribution point.

CRL freshness invariant: the CRL is regenerated after ``crl_refresh_fraction`` of its
validity (half by default), so a published CRL is never past its nextUpdate while the
service runs; it is also regenerated at once when a revocation event arrives from any
process (CLI, API) through the outbox relay.

Rollover: a ``ca.rollover`` event (``fleetwarden ca rollover`` in another process)
makes it reload the fleet CA: new certificates come from the new issuing CA at once,
the new issuing CA joins the TLS client-certificate trust store, and every accepted
issuing CA's CRL keeps being published (``/crl/<name>.crl``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fleetwarden.events import Event, EventClass
from fleetwarden.identity.batching import EnrollBatcher
from fleetwarden.identity.ca import CaPaths, FleetCA
from fleetwarden.identity.est import peer_certificate
from fleetwarden.identity.service import IdentityService, revocation_of, rollover_of
from fleetwarden.identity.tls import manufacturer_cas

if TYPE_CHECKING:
    from fleetwarden.service import Context

log = logging.getLogger(__name__)


class IdentityComponent:
    name = "identity"

    def __init__(self) -> None:
        self.service: IdentityService | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._crl_server: uvicorn.Server | None = None
        self._wake = asyncio.Event()
        self._reload = False
        self._ctx: Context | None = None
        self.crl_port: int | None = None

    async def start(self, ctx: Context) -> None:
        s = ctx.settings
        if not CaPaths.of(s.data_dir).exists():
            log.info("no fleet CA: EST and CRL are off (run `fleetwarden ca init`)")
            return
        self._ctx = ctx
        ca = await run_in_threadpool(FleetCA.load, s.data_dir, s.identity)
        self.service = IdentityService(
            ctx.registry, ca, manufacturer_cas=manufacturer_cas(s.identity)
        )
        ctx.app.state.identity = self.service
        ctx.app.state.device_authenticator = self.authenticate_device
        await run_in_threadpool(self.service.regenerate_crl)
        ctx.bus.subscribe(
            "identity-crl", self._on_event, classes=[EventClass.DEVICE_CONFIG_STATE_CHANGE]
        )
        self._tasks.append(asyncio.create_task(self._refresh(), name="identity-crl"))
        await self._serve_crl(s.identity.crl_host, s.identity.crl_port)
        host = s.identity.crl_host
        for issuer in self.service.ca.issuers:
            label = "CRL" if issuer is self.service.ca else f"CRL (retired {issuer.generation})"
            ctx.urls[label] = f"http://{host}:{self.crl_port}/crl/{issuer.crl_name}.crl"
        ctx.urls["CA chain"] = str(ca.paths.chain)

    def authenticate_device(self, request: Request) -> str | None:
        """Device-facing APIs (hawkBit DDI): the device the TLS client certificate
        proves, None without one; raises ``AuthError`` naming why a certificate is not
        good enough (expired, revoked, unknown, device inactive)."""
        cert = peer_certificate(request)
        if cert is None or self.service is None:
            return None
        return self.service.device_of(cert)

    async def _on_event(self, event: Event) -> None:
        if rollover_of(event) is not None:
            self._reload = True
            self._wake.set()
        elif revocation_of(event) is not None:
            self._wake.set()

    def reload_ca(self) -> None:
        """After a rollover by another process: load the new issuing CA (and the retired
        ones), issue from it, trust it for client certificates."""
        assert self.service is not None
        assert self._ctx is not None
        s = self._ctx.settings
        ca = FleetCA.load(s.data_dir, s.identity)
        known = {c.key_id for c in self.service.ca.issuers}
        self.service.ca = ca
        tls = getattr(self._ctx.app.state, "server_tls", None)
        if tls is not None:
            from cryptography.hazmat.primitives import serialization

            for issuer in ca.issuers:
                if issuer.key_id not in known:
                    # Adds to the live context's store: new handshakes accept it.
                    tls.context.load_verify_locations(
                        cadata=issuer.cert.public_bytes(serialization.Encoding.PEM).decode()
                    )
        log.info(
            "fleet CA reloaded: issuing CA %d (%s)",
            ca.generation,
            ca.cert.subject.rfc4514_string(),
        )

    async def _refresh(self) -> None:
        assert self.service is not None
        cfg = self.service.settings
        period = cfg.crl_validity_hours * 3600 * cfg.crl_refresh_fraction
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=period)
            self._wake.clear()
            try:
                if self._reload:
                    self._reload = False
                    await run_in_threadpool(self.reload_ca)
                await run_in_threadpool(self.service.regenerate_crl)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep trying: a stale CRL is worse than a retry
                log.error("CRL regeneration failed: %s", exc)
                await asyncio.sleep(5)

    async def _serve_crl(self, host: str, port: int) -> None:
        assert self.service is not None
        service = self.service

        async def crl(request: Request) -> Response:
            name = request.path_params["name"]
            issuer = next((c for c in service.ca.issuers if c.crl_name == name), None)
            if issuer is None:
                return Response("no such CRL\n", status_code=404, media_type="text/plain")
            try:
                data = await run_in_threadpool(issuer.crl_file.read_bytes)
            except OSError:
                return Response("no CRL yet\n", status_code=503, media_type="text/plain")
            return Response(data, media_type="application/pkix-crl")

        app = Starlette(routes=[Route("/crl/{name}.crl", crl)])
        from fleetwarden.service import bind_socket

        sock = bind_socket(host, port)
        self.crl_port = sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="off", server_header=False)
        self._crl_server = uvicorn.Server(config)
        self._crl_sock = sock
        self._tasks.append(asyncio.create_task(self._crl_server.serve(sockets=[sock])))
        while not self._crl_server.started and not self._tasks[-1].done():
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self._crl_server is not None:
            self._crl_server.should_exit = True
        for t in self._tasks:
            if t.get_name() == "identity-crl":
                t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._crl_server is not None:
            self._crl_sock.close()
        # the EST group commit, made by the EST endpoint on first use
        enroller: EnrollBatcher | None = (
            getattr(self._ctx.app.state, "est_enroller", None) if self._ctx else None
        )
        if enroller is not None:
            await run_in_threadpool(enroller.close)
