"""The detection component of ``fleetwarden up``.

Inputs: metric windows (contract ``fleetwarden.detect.metric_window/1``) handed to
:meth:`DetectService.ingest` — by the gateway once it lands, and meanwhile by
``POST /v1/detect/metrics`` (recorded metrics, other collectors). Device Config State
Change events (5019) announcing a certificate or firmware change are read from the bus
so legitimate renewals and rollouts are not novel.

Outputs: alerts in the registry with their Detection Findings in the outbox; the sinks
consume Detection Findings from the bus (so an acknowledgement made with the CLI in
another process is notified too); automatic mitigations run right after the alert
commits, approval-mode ones wait for ``alerts approve``.

Invariants: ``ingest`` never raises on bad input (it records and counts); the device
list is a cache refreshed from the registry (the registry stays the only truth); sink
failures never reach this path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from fleetwarden.detect.alerts import AlertOut, AlertStore
from fleetwarden.detect.config import DetectSettings
from fleetwarden.detect.engine import Detector, Signal
from fleetwarden.detect.errors import MitigationNotWiredError
from fleetwarden.detect.metrics import Intake
from fleetwarden.detect.mitigation import Mitigation, mitigations
from fleetwarden.detect.rules import Rule, load_rules
from fleetwarden.detect.sinks import (
    ChatSink,
    Dispatcher,
    Sink,
    SmtpSink,
    SyslogSink,
    WebhookSink,
)
from fleetwarden.errors import ConfigError, Error
from fleetwarden.events import Event, EventClass
from fleetwarden.registry import Actor, Registry
from fleetwarden.registry.models import Device, Group, device_groups

if TYPE_CHECKING:
    from fleetwarden.service import Context

log = logging.getLogger(__name__)
DETECTOR = Actor(name="detector:fleetwarden", via="detect")


def build_sinks(cfg: DetectSettings, data_dir: Path) -> list[Sink]:
    sinks: list[Sink] = []
    for i, sc in enumerate(cfg.sinks):
        name = f"{sc.type}-{i}"
        if sc.type == "webhook":
            path = sc.secret_file if sc.secret_file.is_absolute() else data_dir / sc.secret_file
            try:
                secret = path.read_bytes().strip()
            except OSError as exc:
                raise ConfigError(f"webhook sink: cannot read secret file {path}") from exc
            if len(secret) < 16:
                raise ConfigError(f"webhook sink: secret in {path} is shorter than 16 bytes")
            sinks.append(WebhookSink(sc.url, secret, name=name))
        elif sc.type == "chat":
            sinks.append(ChatSink(sc.url, name=name))
        elif sc.type == "email":
            password = None
            if sc.password_file is not None:
                p = (
                    sc.password_file
                    if sc.password_file.is_absolute()
                    else data_dir / sc.password_file
                )
                try:
                    password = p.read_text().strip()
                except OSError as exc:
                    raise ConfigError(f"email sink: cannot read password file {p}") from exc
            sinks.append(
                SmtpSink(
                    sc.host,
                    sc.port,
                    sc.sender,
                    sc.recipients,
                    starttls=sc.starttls,
                    username=sc.username,
                    password=password,
                    name=name,
                )
            )
        else:
            sinks.append(SyslogSink(sc.host, sc.port, protocol=sc.protocol, name=name))
    return sinks


def note_from_event(event: Event) -> dict[str, Any]:
    """The sink payload for a Detection Finding: the alert view plus the OCSF event."""
    fi = event.data.get("finding_info", {})
    unmapped = event.data.get("unmapped", {})
    ev = event.data.get("evidences") or [{}]
    activity = {1: "alert.opened", 2: "alert.updated", 3: "alert.resolved"}
    return {
        "event": activity.get(event.activity_id, "alert.updated"),
        "alert": {
            "id": fi.get("uid"),
            "title": fi.get("title", event.message),
            "key": (fi.get("analytic") or {}).get("name"),
            "device_id": event.device_uid,
            "severity": {2: "low", 3: "medium", 4: "high", 5: "critical"}.get(
                int(event.severity_id), "medium"
            ),
            "status": event.data.get("status"),
            "count": event.data.get("count"),
            "verification": unmapped.get("verification"),
            # our alerts nest evidence under "data"; other producers' findings may not
            "evidence": ev[0].get("data", ev[0]) if isinstance(ev[0], dict) else {},
        },
        "ocsf": event.to_ocsf(),
    }


class DetectService:
    """Detection as a :class:`fleetwarden.service.Component`."""

    name = "detect"

    def __init__(self, settings: DetectSettings, data_dir: Path) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self._known: set[str] = set()
        self._groups: dict[str, tuple[str, ...]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.detector: Detector | None = None
        self.intake: Intake | None = None
        self.store: AlertStore | None = None
        self.dispatcher: Dispatcher | None = None
        self.mitigations: dict[str, Mitigation] = {}
        self.mitigation_log: list[str] = []
        self._lock = asyncio.Lock()
        self.registry: Registry | None = None
        self._logged_at: dict[str, float] = {}
        self._pending_log: dict[str, int] = {}

    def file_rules(self) -> list[Rule]:
        rf = self.settings.rules_file
        if rf is None:
            return []
        return load_rules(rf if rf.is_absolute() else self.data_dir / rf)

    def reload_rules(self) -> list[Rule]:
        """File rules, overridden by API rules of the same name."""
        assert self.store is not None
        assert self.detector is not None
        rules = {r.name: r for r in self.file_rules()}
        rules.update({r.name: r for r in self.store.rules()})
        merged = list(rules.values())
        self.detector.rules.set_rules(merged)
        return merged

    def refresh_devices(self, registry: Registry) -> None:
        with registry.session() as s:
            ids = set(s.scalars(select(Device.id)))
            groups: dict[str, list[str]] = {}
            rows = s.execute(
                select(device_groups.c.device_id, Group.name)
                .join(Group, Group.id == device_groups.c.group_id)
                .order_by(device_groups.c.device_id, Group.name)
            )
            for did, gname in rows:
                groups.setdefault(did, []).append(gname)
        gone = self._known - ids
        self._known = ids
        self._groups = {k: tuple(v) for k, v in groups.items()}
        # devices removed from the registry leave no state behind (bounded memory)
        for did in gone:
            if self.detector is not None:
                self.detector.forget(did)
            if self.intake is not None:
                self.intake.forget(did)

    async def start(self, ctx: Context) -> None:
        cfg = self.settings
        self.registry = ctx.registry
        self.store = AlertStore(ctx.registry)
        self.detector = Detector(
            [],
            baselines=cfg.baseline_configs(),
            window_s=cfg.window_seconds,
            multivariate=cfg.multivariate,
        )
        await run_in_threadpool(self.reload_rules)
        await run_in_threadpool(self.refresh_devices, ctx.registry)
        await run_in_threadpool(self.load_baselines)
        self.intake = Intake(
            self._known.__contains__,
            window_s=cfg.window_seconds,
            max_per_window=cfg.max_per_window,
            custom_metrics=cfg.custom_metrics,
        )
        # identity and gateway are looked up on the app state when a mitigation runs
        self.mitigations = mitigations(
            ctx.registry, cfg.quarantine_group, state=ctx.app.state, loop=asyncio.get_running_loop()
        )
        self.dispatcher = Dispatcher(
            build_sinks(cfg, self.data_dir),
            queue_size=cfg.sink_queue_size,
            attempts=cfg.sink_attempts,
        )
        self.dispatcher.start()
        ctx.bus.subscribe("detect-sinks", self._on_finding, classes=[EventClass.DETECTION_FINDING])
        ctx.bus.subscribe(
            "detect-config", self._on_config, classes=[EventClass.DEVICE_CONFIG_STATE_CHANGE]
        )
        ctx.app.state.detect = self
        self._tasks.append(asyncio.create_task(self._refresh_loop(), name="detect-refresh"))

    @property
    def snapshot_path(self) -> Path:
        return self.data_dir / "detect" / "baselines.bin"

    def load_baselines(self) -> None:
        assert self.detector is not None
        path = self.snapshot_path
        if not path.exists():
            return
        try:
            n = self.detector.baselines.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            # start fresh rather than judge devices on a damaged state; keep the file
            log.warning("detect: baseline snapshot %s not loaded: %s", path, exc)
            return
        log.info("detect: loaded baselines of %d devices", n)

    async def save_baselines(self) -> None:
        """Snapshot under the ingest lock (consistent: no window is half-applied), write
        in a thread. Costs about 1 s of CPU per 500,000 devices on the event loop."""
        assert self.detector is not None
        from fleetwarden._internal.files import atomic_write

        async with self._lock:
            raw = self.detector.baselines.dumps()
        # 0600: behaviour profiles reveal when each device is active
        await run_in_threadpool(atomic_write, self.snapshot_path, raw, mode=0o600)

    async def _refresh_loop(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(30)
            ticks += 1
            if ticks % 20 == 0:  # every 10 minutes
                try:
                    await self.save_baselines()
                except OSError as exc:
                    log.warning("detect: cannot save baselines: %s", exc)
            try:
                assert self.registry is not None
                await run_in_threadpool(self.refresh_devices, self.registry)
                await run_in_threadpool(self.reload_rules)
            except Error as exc:
                log.warning("detect: refresh failed: %s", exc)

    async def _on_finding(self, event: Event) -> None:
        if self.dispatcher is not None:
            self.dispatcher.notify(note_from_event(event))

    async def _on_config(self, event: Event) -> None:
        changes = (event.data.get("unmapped") or {}).get("changes") or {}
        if self.detector is None or not event.device_uid or not isinstance(changes, dict):
            return
        cert = changes.get("certificate_fingerprint") or changes.get("cert_fingerprint")
        fw = changes.get("firmware_version")
        self.detector.expect(
            event.device_uid,
            certificate=cert if isinstance(cert, str) else None,
            firmware=fw if isinstance(fw, str) else None,
        )

    async def ingest(self, items: list[Any]) -> dict[str, Any]:
        """Feed datapoints; returns counts. Never raises on bad input."""
        assert self.intake is not None
        assert self.detector is not None
        self.intake.known = self._known.__contains__
        accepted = 0
        signals: list[Signal] = []
        before = dict(self.intake.rejected)
        async with self._lock:
            for n, obj in enumerate(items):
                if n and n % 1000 == 0:
                    await asyncio.sleep(0)  # a 10,000-window batch must not stall the API
                mw = self.intake.offer(obj)
                if mw is None:
                    continue
                accepted += 1
                signals += self.detector.process(mw, self._groups.get(mw.device_id, ()))
        alerts: list[AlertOut] = []
        if signals:
            alerts = await run_in_threadpool(self._store_signals, signals)
        reasons = {
            k: v - before.get(k, 0) for k, v in self.intake.rejected.items() if v > before.get(k, 0)
        }
        if reasons:
            self._log_rejections(reasons)
        return {
            "accepted": accepted,
            "rejected": len(items) - accepted,
            "reasons": reasons,
            "alerts": [a.id for a in alerts],
        }

    def _log_rejections(self, reasons: dict[str, int]) -> None:
        # one line per reason per minute at most: a flood must not become a log flood
        now = time.monotonic()
        for reason, n in reasons.items():
            self._pending_log[reason] = self._pending_log.get(reason, 0) + n
            if now - self._logged_at.get(reason, 0.0) >= 60:
                last = self.intake.recent[-1].detail if self.intake and self.intake.recent else ""
                log.warning(
                    "detect: refused %d datapoint(s): %s (latest: %s)",
                    self._pending_log.pop(reason),
                    reason,
                    last,
                )
                self._logged_at[reason] = now

    def _store_signals(self, signals: list[Signal]) -> list[AlertOut]:
        assert self.store is not None
        out: list[AlertOut] = []
        for sig in signals:
            alert = self.store.apply(sig)
            if alert is None:
                continue
            out.append(alert)
            mit = alert.mitigation
            if sig.kind == "alarm" and mit.get("mode") == "auto" and mit.get("state") == "pending":
                self.run_mitigation(alert.id)
        return out

    def run_mitigation(self, alert_id: str, actor: Actor = DETECTOR) -> AlertOut:
        """Run the alert's mitigation (auto mode, or approval given by ``actor``)."""
        assert self.store is not None
        return run_mitigation(self.store, self.mitigations, alert_id, actor)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self.detector is not None:
            try:
                await self.save_baselines()
            except OSError as exc:
                log.warning("detect: cannot save baselines: %s", exc)
        if self.dispatcher is not None:
            await self.dispatcher.drain(timeout=2.0)
            await self.dispatcher.close()


def run_mitigation(
    store: AlertStore, available: dict[str, Mitigation], alert_id: str, actor: Actor
) -> AlertOut:
    """Apply an alert's declared mitigation and record the outcome on the alert."""
    from fleetwarden.errors import ValidationError

    alert = store.get(alert_id)
    action = alert.mitigation.get("action")
    if not action:
        raise ValidationError(f"alert {alert_id} has no mitigation (only rules declare them)")
    if alert.mitigation.get("state") == "done":
        return alert
    if alert.device_id is None:
        raise ValidationError(f"alert {alert_id} names no device")
    mit = available.get(str(action))
    if mit is None:
        raise ValidationError(f"unknown mitigation {action!r}")
    try:
        what = mit.apply(alert.device_id, alert_id, actor)
    except MitigationNotWiredError as exc:
        return store.set_mitigation(
            alert_id, {"state": "not_wired", "detail": str(exc), "by": actor.name}, actor
        )
    except (Error, RuntimeError, ValueError, TimeoutError) as exc:
        # e.g. no unrevoked certificate, broker unreachable: recorded, retried on approval,
        # never raised into the ingest path
        log.warning("detect: mitigation %s for alert %s failed: %s", action, alert_id, exc)
        return store.set_mitigation(
            alert_id,
            {"state": "failed", "detail": f"{type(exc).__name__}: {exc}", "by": actor.name},
            actor,
        )
    return store.set_mitigation(
        alert_id, {"state": "done", "detail": what, "by": actor.name}, actor
    )
