"""The gateway component run by ``fleetwarden up``: broker, monitor, policy, revocation.

Flow: registry -> ``policy.tsv`` / ``revoked.txt`` -> plugin (reloaded on change); broker
plugin -> NDJSON on ``fleetwarden/_gw/{events,metrics}`` -> :class:`Gateway` monitor ->
OCSF events (refusals and M1 findings through the registry outbox, connects, logoffs and
metric windows straight on the bus).

Revocation contract (what the identity control emits): an OCSF 5019 Device Config State
Change event whose ``data["unmapped"]["changes"]["certificate"]`` is a dict with
``"status": "revoked"`` and ``"serial"`` (hex string or int). The subscriber calls
:meth:`Gateway.revoke`, the one entry point, which (1) adds the serial to the plugin's
in-memory revoked set and kicks a live session carrying that serial through
``$CONTROL/fleetwarden/v1``, and (2) persists the serial in ``revoked.txt`` so a broker
restart keeps refusing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import secrets
import socket
import time
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fleetwarden._internal.files import write_secret
from fleetwarden.events import (
    AuthActivity,
    Event,
    EventClass,
    Severity,
    authentication,
    detection_finding,
)
from fleetwarden.gateway.brokerconf import BrokerFiles, render_config
from fleetwarden.gateway.build import build_plugin
from fleetwarden.gateway.config import GatewaySettings
from fleetwarden.gateway.metrics import MetricsAggregator, detect_window, metric_event
from fleetwarden.gateway.policy import (
    canonical_serial,
    compile_policy,
    crl_serials,
    render_policy,
    render_revoked,
    write_if_changed,
)
from fleetwarden.gateway.supervisor import BrokerSupervisor, check_binary

if TYPE_CHECKING:
    from fleetwarden.service import Context

log = logging.getLogger(__name__)

PLATFORM_USER = "$platform"
CONTROL_TOPIC = "$CONTROL/fleetwarden/v1"
REPORT_TOPICS = "fleetwarden/_gw/#"
PROTOCOL = "MQTT over mutual TLS"
_MAX_REPORT = 8 * 1024 * 1024
_REFUSAL_EVENTS_PER_ADDR = 20  # per 10 s; the rest only count in metrics
_REASON_TEXT = {
    "revoked": "certificate revoked",
    "unknown_device": "certificate CN is not a registered device",
    "device_status": "device status forbids connecting",
    "client_id_mismatch": "client id does not match the certificate",
    "source_network": "source address outside the allowed networks",
    "no_certificate": "no client certificate",
    "bad_identity": "certificate carries no usable identity",
    "rate_limited": "too many connection attempts from this address",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse_serial(value: Any) -> str | None:
    """A revoked serial from an event: int, or hex with optional 0x / colons."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return canonical_serial(value) if value >= 0 else None
    if isinstance(value, str):
        text = value.strip().lower().removeprefix("0x").replace(":", "")
        if 0 < len(text) <= 80 and all(c in "0123456789abcdef" for c in text):
            return canonical_serial(text)
    return None


class Gateway:
    """Component: supervises the broker and turns its reports into events."""

    name = "gateway"

    def __init__(self) -> None:
        self.supervisor: BrokerSupervisor | None = None
        self.skipped: str | None = None
        self.port = 0
        self.platform_port = 0
        self.metrics: MetricsAggregator | None = None
        self.live_revoked: set[str] = set()
        self._client: mqtt.Client | None = None
        self._password = ""
        self._inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=100_000)
        self._tasks: list[asyncio.Task[None]] = []
        self._policy_dirty = asyncio.Event()
        self.policy_compiles = 0  # recompiles run by the refresh loop (diagnostics, tests)
        self._policy_lock = asyncio.Lock()
        self._refusals: dict[str, tuple[int, int]] = {}
        self._connected = asyncio.Event()
        self.dropped_reports = 0

    @staticmethod
    def _from_fleet_ca(ctx: Context, gs: GatewaySettings) -> GatewaySettings:
        """With a fleet CA (the identity control is running) and the certificate paths
        left at their defaults, the broker trusts the CA chain and refuses the CRL that
        the identity control keeps, and serves a certificate issued by the fleet CA
        (re-issued like the API's: when missing, renamed, or past 2/3 of its life).
        Paths set explicitly are used as they are."""
        identity = getattr(ctx.app.state, "identity", None)
        if identity is None:
            return gs
        from fleetwarden.identity.tls import ensure_server_certificate, server_names

        ddir = ctx.settings.data_dir
        default = GatewaySettings()
        update: dict[str, Any] = {}
        if gs.ca_file == default.ca_file and not gs.path(ddir, gs.ca_file).exists():
            update["ca_file"] = identity.ca.paths.chain
        if gs.crl_file is None:
            # every accepted issuing CA's CRL (one PEM file; several after a rollover)
            update["crl_file"] = identity.ca.paths.crl_bundle
        if gs.cert_file == default.cert_file and gs.key_file == default.key_file:
            names = server_names(ctx.settings)
            if gs.host not in {"0.0.0.0", "::"}:  # noqa: S104 (a comparison)
                names = list(dict.fromkeys([*names, gs.host]))
            ensure_server_certificate(
                identity.ca,
                names,
                ctx.registry,
                cert_path=gs.path(ddir, gs.cert_file),
                key_path=gs.path(ddir, gs.key_file),
            )
        return gs.model_copy(update=update) if update else gs

    # ------------------------------------------------------------------ lifecycle
    async def start(self, ctx: Context) -> None:
        self.ctx = ctx
        gs: GatewaySettings = ctx.settings.gateway
        self.gs = gs
        if not gs.enabled:
            self.skipped = "disabled (gateway.enabled = false)"
            return
        gs = self.gs = await asyncio.to_thread(self._from_fleet_ca, ctx, gs)
        ddir = ctx.settings.data_dir
        ca, cert, key = (gs.path(ddir, p) for p in (gs.ca_file, gs.cert_file, gs.key_file))
        missing = [str(p) for p in (ca, cert, key) if not p.exists()]
        if missing:
            self.skipped = (
                f"not started: {', '.join(missing)} missing (set gateway.ca_file, "
                "gateway.cert_file, gateway.key_file or issue them with the fleet CA)"
            )
            log.warning("gateway %s", self.skipped)
            return
        check_binary(gs.mosquitto_bin)
        gdir = ddir / "gateway"
        gdir.mkdir(parents=True, exist_ok=True)
        plugin = await asyncio.to_thread(build_plugin, gdir / "build")
        self.files = BrokerFiles(
            conf=gdir / "mosquitto.conf",
            plugin=plugin,
            policy=gdir / "policy.tsv",
            revoked=gdir / "revoked.txt",
            ca=ca,
            cert=cert,
            key=key,
        )
        self._live_path = gdir / "revoked-live.txt"
        if self._live_path.exists():
            self.live_revoked = {
                s for s in (parse_serial(x) for x in self._live_path.read_text().split()) if s
            }
        await asyncio.to_thread(self._write_policy)
        self.port = gs.port
        self.platform_port = gs.platform_port or free_port()
        self._password = secrets.token_urlsafe(32)
        conf = render_config(
            gs, self.files, platform_port=self.platform_port, platform_password=self._password
        )
        write_secret(self.files.conf, conf.encode())
        self.metrics = MetricsAggregator(gs.metrics_window_s)
        self._loop = asyncio.get_running_loop()
        self.supervisor = BrokerSupervisor(
            gs.mosquitto_bin,
            self.files.conf,
            ready_port=self.platform_port,
            backoff_max=gs.restart_backoff_max_s,
            on_tls_failure=self._tls_failure,
        )
        await self.supervisor.start()
        self._tasks = [
            asyncio.create_task(self._consume(), name="gateway-monitor"),
            asyncio.create_task(self._refresh_loop(), name="gateway-policy"),
            asyncio.create_task(self._flush_loop(), name="gateway-metrics"),
        ]
        self._start_client()
        try:
            await asyncio.wait_for(self._connected.wait(), timeout=10)
        except TimeoutError:
            log.warning("gateway monitor not yet connected to the broker; retrying")
        ctx.bus.subscribe(
            "gateway-revocation",
            self._on_device_change,
            classes=[EventClass.DEVICE_CONFIG_STATE_CHANGE, EventClass.API_ACTIVITY],
        )
        ctx.app.state.gateway = self  # other controls (detect's drop_session) act through it
        host = gs.host if gs.host not in ("0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
        ctx.urls["MQTT (mTLS)"] = f"mqtts://{host}:{self.port}"

    async def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks = []
        if self.supervisor is not None:
            await self.supervisor.stop()
        if self.metrics is not None:
            await self._publish_metrics(final=True)

    # ----------------------------------------------------------------- revocation
    async def revoke(self, device_id: str | None, serial: str | int | None) -> None:
        """Refuse ``serial`` from now on and drop the live session that carries it.

        With no serial, the device's live session is dropped and its policy refreshed
        (the registry status then decides whether it may come back).
        """
        canon = parse_serial(serial)
        # Kick first: persisting the serial must not delay dropping the session.
        await self._control("\t".join(["revoke", device_id or "", canon or ""]))
        if canon is not None and canon not in self.live_revoked:
            self.live_revoked.add(canon)
            async with self._policy_lock:
                await asyncio.to_thread(self._write_revoked)
        if canon is None:
            self._policy_dirty.set()

    async def drop_session(self, device_id: str) -> None:
        """Drop the device's live session without revoking anything (``kick`` on the
        control channel); the device may reconnect and meets the current policy."""
        if not device_id or any(c in device_id for c in "\t\n\r"):
            raise ValueError(f"not a device id: {device_id!r}")
        if self._client is None:
            raise RuntimeError("the gateway's control client is not running")
        await self._control(f"kick\t{device_id}")

    async def _on_device_change(self, event: Event) -> None:
        if event.class_uid == EventClass.API_ACTIVITY:
            # Registry edits (device/group add, update, import, membership) change the
            # policy: recompile now rather than at the next periodic refresh.
            api = event.data.get("api")
            op = api.get("operation") if isinstance(api, dict) else None
            if isinstance(op, str) and op.startswith(("device.", "group.")):
                self._policy_dirty.set()
            return
        # The identity control's revocation event (identity.service.revocation_of).
        from fleetwarden.identity.service import revocation_of, rollover_of

        if rollover_of(event) is not None:
            # chain.pem now holds the new issuing CA; Mosquitto 2.0 re-reads its CA file
            # only at start (SIGHUP reloads the server certificate, not the trust store).
            if self.supervisor is not None:
                log.info("gateway: fleet CA rolled over; restarting the broker to trust it")
                await self.supervisor.restart()
            self._policy_dirty.set()
            return

        revoked = revocation_of(event)
        if revoked is not None:
            device_id, serials, _fingerprints = revoked
            targets: list[str | None] = list(serials) or [None]
            for serial in targets:
                await self.revoke(device_id, serial)
            return
        # The gateway's own documented shape (docs/gateway.md), for other producers.
        unmapped = event.data.get("unmapped")
        changes = unmapped.get("changes") if isinstance(unmapped, dict) else None
        cert = changes.get("certificate") if isinstance(changes, dict) else None
        if isinstance(cert, dict) and cert.get("status") == "revoked":
            await self.revoke(event.device_uid, cert.get("serial"))
        elif _identity_event(changes) in _NO_POLICY_EFFECT:
            return  # e.g. a certificate issued: nothing policy.tsv holds has changed
        else:
            self._policy_dirty.set()  # status, group or network change: recompile

    async def _control(self, command: str) -> None:
        client = self._client
        if client is None:
            return
        info = client.publish(CONTROL_TOPIC, command.encode(), qos=1)
        await asyncio.to_thread(info.wait_for_publish, 5.0)

    # --------------------------------------------------------------------- policy
    def _write_policy(self) -> bool:
        policies = compile_policy(
            self.ctx.registry, self.gs.refused_statuses, self.gs.quarantine_group
        )
        changed = write_if_changed(self.files.policy, render_policy(policies))
        return self._write_revoked() or changed

    def _write_revoked(self) -> bool:
        """revoked.txt = CRL serials + live revocations (persisted in revoked-live.txt)."""
        write_if_changed(self._live_path, render_revoked(self.live_revoked))
        serials = set(self.live_revoked)
        if self.gs.crl_file is not None:
            crl = self.gs.path(self.ctx.settings.data_dir, self.gs.crl_file)
            if crl.exists():
                try:
                    serials |= crl_serials(crl)
                except (OSError, ValueError) as exc:
                    # Keep the last good list: an unreadable CRL must not un-revoke.
                    log.error("gateway: cannot read CRL %s: %s", crl, exc)
                    return False
        return write_if_changed(self.files.revoked, render_revoked(serials))

    async def reload_policy(self) -> bool:
        """Recompile policy and revoked list; tell the plugin when either changed.

        Serialised: two overlapping compiles could otherwise let an older registry
        snapshot overwrite a newer one."""
        async with self._policy_lock:
            changed = await asyncio.to_thread(self._write_policy)
            if changed:
                await self._control("reload")
            return changed

    async def _refresh_loop(self) -> None:
        """Recompile on a change signal, else every ``policy_refresh_s``.

        A recompile reads every device with its groups, so a burst of changes (a bulk
        import, many status edits) must not cost one each: after a recompile the next
        one waits until ``policy_min_interval_s`` has passed, and every signal raised
        meanwhile is served by that one. The first change after a quiet spell is
        compiled at once. Revocations do not wait for this loop (:meth:`revoke`)."""
        loop = asyncio.get_running_loop()
        last_done = -math.inf
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._policy_dirty.wait(), timeout=self.gs.policy_refresh_s)
            pause = last_done + self.gs.policy_min_interval_s - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
            self._policy_dirty.clear()  # after the pause: this compile covers the burst
            try:
                await self.reload_policy()
            except Exception as exc:  # database hiccup: keep the last policy
                log.warning("gateway policy refresh failed: %s", exc)
            last_done = loop.time()
            self.policy_compiles += 1

    # -------------------------------------------------------------------- monitor
    def _start_client(self) -> None:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"fleetwarden-monitor-{secrets.token_hex(4)}",
            protocol=mqtt.MQTTv311,
        )
        client.username_pw_set(PLATFORM_USER, self._password)
        client.reconnect_delay_set(1, 2)
        client.max_queued_messages_set(10_000)

        def on_connect(c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
            if not rc.is_failure:
                c.subscribe(REPORT_TOPICS, qos=1)
                self._loop.call_soon_threadsafe(self._connected.set)
                # Anything revoked while we were away is in revoked.txt: reload it.
                c.publish(CONTROL_TOPIC, b"reload", qos=1)

        def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
            self._loop.call_soon_threadsafe(self._enqueue, msg.topic, bytes(msg.payload))

        client.on_connect = on_connect
        client.on_message = on_message
        client.connect_async("127.0.0.1", self.platform_port, keepalive=30)
        client.loop_start()
        self._client = client

    def _enqueue(self, topic: str, payload: bytes) -> None:
        try:
            self._inbox.put_nowait((topic, payload))
        except asyncio.QueueFull:
            self.dropped_reports += 1

    async def _consume(self) -> None:
        while True:
            topic, payload = await self._inbox.get()
            batch = [(topic, payload)]
            while not self._inbox.empty() and len(batch) < 1000:
                batch.append(self._inbox.get_nowait())
            outbox: list[Event] = []
            for t, p in batch:
                try:
                    await self._handle(t, p, outbox)
                except Exception:
                    log.exception("gateway report on %s could not be handled", t)
            if outbox:
                try:
                    await asyncio.to_thread(self._record, outbox)
                except Exception as exc:
                    log.error("gateway: %d security events not recorded: %s", len(outbox), exc)

    def _record(self, events: list[Event]) -> None:
        reg = self.ctx.registry
        with reg.session() as s:
            for e in events:
                reg.record(s, e)

    async def _handle(self, topic: str, payload: bytes, outbox: list[Event]) -> None:
        if len(payload) > _MAX_REPORT:
            return
        lines = payload.decode("utf-8", "replace").splitlines()
        if topic.endswith("/metrics"):
            assert self.metrics is not None
            for line in lines:
                with contextlib.suppress(ValueError):
                    rec = json.loads(line)
                    if isinstance(rec, dict):
                        self.metrics.add(rec)
            return
        if not topic.endswith("/events"):
            return
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                ev, durable = self._event_for(rec)
                if ev is not None:
                    if durable:
                        outbox.append(ev)
                    else:
                        await self.ctx.bus.publish(ev)

    def _event_for(self, rec: dict[str, Any]) -> tuple[Event | None, bool]:
        kind = rec.get("kind")
        device = _s(rec.get("device"))
        addr = _s(rec.get("address"))
        serial = _s(rec.get("serial"))
        reason = _s(rec.get("reason"))
        detail = _s(rec.get("detail"))
        extra: dict[str, Any] = {
            "unmapped": {
                "gateway": {
                    "kind": kind,
                    "reason": reason,
                    "detail": detail,
                    "serial": serial,
                    "client_id": _s(rec.get("client_id")),
                }
            }
        }
        if kind == "connected":
            return (
                authentication(
                    device_uid=device,
                    src_ip=addr,
                    success=True,
                    message=f"device {device} connected from {addr}"
                    + (" (quarantined)" if reason == "quarantined" else ""),
                    protocol=PROTOCOL,
                    extra=extra,
                ),
                False,
            )
        if kind == "disconnected":
            return (
                authentication(
                    device_uid=device,
                    src_ip=addr,
                    success=True,
                    activity=AuthActivity.LOGOFF,
                    message=f"device {device} disconnected",
                    protocol=PROTOCOL,
                    extra=extra,
                ),
                False,
            )
        if kind == "auth_refused":
            if not self._refusal_allowed(addr or "unknown"):
                return None, False
            text = _REASON_TEXT.get(reason or "", reason or "refused")
            who = f"device {device}" if device else f"client from {addr}"
            msg = f"{who} refused: {text}"
            if reason == "source_network":
                msg = f"device {device} refused from {addr}: not allowed by rule {detail}"
            sev = Severity.HIGH if reason in ("revoked", "source_network") else Severity.MEDIUM
            return (
                authentication(
                    device_uid=device,
                    src_ip=addr,
                    success=False,
                    message=msg,
                    protocol=PROTOCOL,
                    severity=sev,
                    extra=extra,
                ),
                True,
            )
        if kind == "quarantined" and reason == "policy":
            return (
                authentication(
                    device_uid=device,
                    src_ip=addr,
                    success=True,
                    message=f"device {device} connected from {addr} into quarantine "
                    "(quarantine group member)",
                    protocol=PROTOCOL,
                    severity=Severity.MEDIUM,
                    extra=extra,
                ),
                True,
            )
        if kind == "quarantined":
            return (
                detection_finding(
                    title=f"device {device} connected from {addr} outside rule {detail}; "
                    "quarantined",
                    uid=f"gateway.source_network.{device}",
                    severity=Severity.HIGH,
                    device_uid=device,
                    src_ip=addr,
                    evidence={"rule": detail, "address": addr, "control": "C3/C4"},
                ),
                True,
            )
        if kind == "shared_credential":
            other = _s(rec.get("client_id"))  # the plugin puts the live session's address here
            return (
                detection_finding(
                    title=f"shared credential (M1): device {device} connected from {addr} "
                    f"while a session from {other} was live ({reason})",
                    uid=f"gateway.shared_credential.{device}",
                    severity=Severity.HIGH,
                    device_uid=device,
                    src_ip=addr,
                    evidence={
                        "kind": reason,
                        "addresses": [other, addr],
                        "serial": serial,
                        "mistake": "M1",
                    },
                ),
                True,
            )
        if kind == "kicked":
            return (
                authentication(
                    device_uid=device,
                    src_ip=addr,
                    success=True,
                    activity=AuthActivity.LOGOFF,
                    message=f"device {device} session dropped: certificate {serial} revoked"
                    if reason == "revoked"
                    else f"device {device} session dropped: policy changed ({reason})",
                    protocol=PROTOCOL,
                    severity=Severity.MEDIUM,
                    extra=extra,
                ),
                True,
            )
        return None, False

    def _refusal_allowed(self, addr: str) -> bool:
        window = int(time.time() // 10)
        w, n = self._refusals.get(addr, (window, 0))
        if w != window:
            w, n = window, 0
        if len(self._refusals) > 10_000:
            self._refusals.clear()
        self._refusals[addr] = (w, n + 1)
        return n < _REFUSAL_EVENTS_PER_ADDR

    def _tls_failure(self, address: str, reason: str) -> None:
        """Called from the broker log reader: a handshake failed before MQTT began."""
        if self.metrics is not None:
            self.metrics.add_unattributed_failure(address)
        if not self._refusal_allowed(address):
            return
        ev = authentication(
            device_uid=None,
            src_ip=address,
            success=False,
            message=f"TLS handshake from {address} refused: {reason[:200]}",
            protocol=PROTOCOL,
            extra={"unmapped": {"gateway": {"kind": "tls_failure", "reason": reason[:200]}}},
        )
        task = asyncio.get_running_loop().create_task(asyncio.to_thread(self._record, [ev]))
        task.add_done_callback(_log_failure)

    # -------------------------------------------------------------------- metrics
    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.metrics is not None and self.metrics.due():
                await self._publish_metrics()

    async def _publish_metrics(self, *, final: bool = False) -> None:
        assert self.metrics is not None
        windows: list[dict[str, Any]] = []
        for rec in self.metrics.flush():
            w = detect_window(rec, self.gs.metrics_window_s)
            if w is not None:
                windows.append(w)
            try:
                await self.ctx.bus.publish(metric_event(rec, self.gs.metrics_window_s))
            except RuntimeError:
                if not final:
                    raise
                return
        # In one `up` process the detection control registers itself on the app state;
        # hand it the windows directly (its documented in-process intake).
        detect = getattr(self.ctx.app.state, "detect", None)
        ingest = getattr(detect, "ingest", None)
        if windows and ingest is not None:
            try:
                await ingest(windows)
            except Exception as exc:
                log.warning("gateway: detection intake refused %d windows: %s", len(windows), exc)

    async def flush_metrics_now(self) -> None:
        """Close the current window at once (tests, shutdown)."""
        await self._publish_metrics()


# Identity-control events that change nothing policy.tsv holds (device id, status,
# groups, networks, quarantine): issuing a certificate (the most frequent event of all:
# one per enrolment), tokens, enrolment requests and their decisions, rotation policies.
# Revocations are handled before this check; anything not listed here recompiles.
_NO_POLICY_EFFECT = frozenset(
    {
        "certificate.issued",
        "enrollment.refused",
        "enrollment.pending",
        "enrollment.approved",
        "enrollment.rejected",
        "token.created",
        "rotation_policy.set",
    }
)


def _identity_event(changes: Any) -> str | None:
    value = changes.get("identity_event") if isinstance(changes, dict) else None
    return value if isinstance(value, str) else None


def _s(v: Any) -> str | None:
    return v[:256] if isinstance(v, str) else None


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("gateway: TLS refusal not recorded: %s", task.exception())
