"""Staged rollouts of a firmware release (control C6).

A rollout splits its target devices into ordered groups: explicit device lists first,
then cumulative percentages assigned by deterministic bucketing (SHA-256 of product and
device id), so the same devices are always the canaries of a product line.

State machine (every transition is an event in the outbox, in the same transaction)::

    running --success threshold of the last group--> completed
    running --error threshold, action pause--> paused --resume--> running
    running --error threshold, action stop--> stopped
    running|paused --pause/resume--> paused|running
    any but completed/cancelled --cancel--> cancelled
    (rollback creates a new rollout of the previous release for the same devices)

Invariants:
- only the current group's deployments are ``scheduled`` (offered to devices); later
  groups wait until the current group reaches the success threshold;
- a group's counters and each deployment's state change in one transaction with the
  device's feedback, so a crash never loses or double-counts a report;
- feedback for a device that has no open deployment in a running or paused rollout is
  ignored (returned as ignored), never applied to another rollout.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from fleetwarden.errors import ConflictError, NotFoundError, ValidationError
from fleetwarden.events import Activity, Event, Severity, Status, api_activity, device_config_change
from fleetwarden.firmware.errors import RolloutError
from fleetwarden.firmware.models import (
    FirmwareDeployment,
    FirmwareProduct,
    FirmwareRelease,
    FirmwareRollout,
)
from fleetwarden.registry import Actor, Registry
from fleetwarden.registry.models import Device, Group, OutboxEvent, device_groups

OPEN_STATES = ("scheduled", "proceeding")
ACTIVE_ROLLOUT = ("running", "paused")
FeedbackStatus = Literal["proceeding", "success", "failure"]


def bucket(product: str, device_id: str) -> float:
    """Deterministic position of a device in [0, 100) for a product line."""
    h = hashlib.sha256(f"{product}\0{device_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 * 100


@dataclass(frozen=True)
class Stage:
    """``percent`` (cumulative, of the devices not listed explicitly) or ``devices``."""

    percent: float | None = None
    devices: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Stage:
        text = text.strip()
        if text.startswith("devices:"):
            devs = tuple(d for d in text[len("devices:") :].split(",") if d)
            if not devs:
                raise ValidationError("a devices: stage needs at least one device id")
            return cls(devices=devs)
        try:
            pct = float(text.rstrip("%"))
        except ValueError:
            raise ValidationError(f"stage {text!r}: use N% or devices:a,b,c") from None
        if not 0 < pct <= 100 or math.isnan(pct):
            raise ValidationError(f"stage {text!r}: percentage must be in (0, 100]")
        return cls(percent=pct)


def assign_groups(product: str, devices: Sequence[str], stages: Sequence[Stage]) -> list[list[str]]:
    """Split devices into groups (see module docstring); the last percentage is 100."""
    explicit: set[str] = set()
    groups: list[list[str]] = []
    known = set(devices)
    for st in stages:
        if st.devices:
            missing = [d for d in st.devices if d not in known]
            if missing:
                raise ValidationError(f"stage devices not in the rollout target: {missing[:5]}")
            dup = [d for d in st.devices if d in explicit]
            if dup:
                raise ValidationError(f"device {dup[0]} is listed in two stages")
            explicit.update(st.devices)
    pcts = [st.percent for st in stages if st.percent is not None]
    if pcts != sorted(pcts):
        raise ValidationError("percentage stages must be increasing (they are cumulative)")
    rest = sorted((bucket(product, d), d) for d in devices if d not in explicit)
    prev = 0.0
    percent_stages = list(stages)
    if not pcts or pcts[-1] < 100:
        percent_stages.append(Stage(percent=100.0))
    for st in percent_stages:
        if st.devices:
            groups.append(list(st.devices))
            continue
        assert st.percent is not None
        groups.append([d for b, d in rest if prev <= b < st.percent])
        prev = st.percent
    return [g for g in groups if g]


@dataclass
class Feedback:
    device_id: str
    status: FeedbackStatus
    detail: str | None = None
    rollout: str | None = None
    #: who reported (``device:<id>`` over DDI); defaults to the batch's actor
    actor: str | None = None


@dataclass
class FeedbackResult:
    applied: int = 0
    ignored: int = 0
    transitions: list[str] = field(default_factory=list)
    #: per report, in order: was it applied
    outcomes: list[bool] = field(default_factory=list)


def _rollout_event(actor: str, r: FirmwareRollout, transition: str, message: str) -> Event:
    severe = transition in {"stopped", "paused_on_errors", "rolled_back"}
    return api_activity(
        operation=f"firmware.rollout.{transition}",
        activity=Activity.UPDATE if transition != "created" else Activity.CREATE,
        actor=actor,
        message=message,
        status=Status.SUCCESS,
        severity=Severity.MEDIUM if severe else Severity.INFORMATIONAL,
        resources=[
            {
                "type": "firmware_rollout",
                "uid": r.name,
                "state": r.state,
                "group": r.current_group,
            }
        ],
    )


def rollout_out(r: FirmwareRollout, product: str, version: str) -> dict[str, Any]:
    return {
        "name": r.name,
        "product": product,
        "version": version,
        "state": r.state,
        "current_group": r.current_group,
        "success_threshold": r.success_threshold,
        "error_threshold": r.error_threshold,
        "error_action": r.error_action,
        "groups": [dict(g) for g in r.groups],
    }


class RolloutService:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def _get(self, s: Session, name: str) -> FirmwareRollout:
        r = s.scalar(select(FirmwareRollout).where(FirmwareRollout.name == name))
        if r is None:
            raise NotFoundError(f"unknown rollout {name!r}")
        return r

    def _out(self, s: Session, r: FirmwareRollout) -> dict[str, Any]:
        product = s.get(FirmwareProduct, r.product_id)
        rel = s.get(FirmwareRelease, r.release_id)
        assert product is not None
        assert rel is not None
        return rollout_out(r, product.name, rel.version)

    def create(
        self,
        name: str,
        product: str,
        version: str,
        actor: Actor,
        *,
        group: str | None = None,
        devices: Sequence[str] = (),
        stages: Sequence[Stage] = (),
        success_threshold: int = 95,
        error_threshold: int = 10,
        error_action: str = "pause",
        _previous: int | None = None,
    ) -> dict[str, Any]:
        if not 1 <= success_threshold <= 100 or not 1 <= error_threshold <= 100:
            raise ValidationError("thresholds are percentages between 1 and 100")
        if error_action not in {"pause", "stop"}:
            raise ValidationError("error action is pause or stop")
        if not name or len(name) > 128:
            raise ValidationError("rollout name must be 1-128 characters")
        with self.registry.session() as s:
            if s.scalar(select(FirmwareRollout.id).where(FirmwareRollout.name == name)):
                raise ConflictError(f"rollout {name!r} already exists")
            p = s.scalar(select(FirmwareProduct).where(FirmwareProduct.name == product))
            if p is None:
                raise NotFoundError(f"unknown firmware product {product!r}")
            rel = s.scalar(
                select(FirmwareRelease).where(
                    FirmwareRelease.product_id == p.id, FirmwareRelease.version == version
                )
            )
            if rel is None:
                raise NotFoundError(f"no release {version} of {product}")
            targets = self._targets(s, group, devices)
            if not targets:
                raise ValidationError("the rollout has no target devices")
            groups = assign_groups(product, targets, stages)
            previous = _previous
            if previous is None:
                older = [
                    r
                    for r in s.scalars(
                        select(FirmwareRelease).where(FirmwareRelease.product_id == p.id)
                    )
                    if (r.v_major, r.v_minor, r.v_revision, r.v_build)
                    < (rel.v_major, rel.v_minor, rel.v_revision, rel.v_build)
                ]
                if older:
                    previous = max(
                        older, key=lambda r: (r.v_major, r.v_minor, r.v_revision, r.v_build)
                    ).id
            r = FirmwareRollout(
                name=name,
                product_id=p.id,
                release_id=rel.id,
                previous_release_id=previous,
                state="running",
                success_threshold=success_threshold,
                error_threshold=error_threshold,
                error_action=error_action,
                current_group=0,
                groups=[
                    {
                        "index": i,
                        "size": len(g),
                        "succeeded": 0,
                        "failed": 0,
                        "state": "running" if i == 0 else "waiting",
                    }
                    for i, g in enumerate(groups)
                ],
            )
            s.add(r)
            s.flush()
            now = datetime.now(UTC)
            rows = [
                {
                    "rollout_id": r.id,
                    "device_id": d,
                    "group_index": i,
                    "state": "scheduled" if i == 0 else "waiting",
                    "updated_at": now,
                }
                for i, g in enumerate(groups)
                for d in g
            ]
            for k in range(0, len(rows), 5000):
                s.execute(insert(FirmwareDeployment), rows[k : k + 5000])
            self.registry.record(
                s,
                _rollout_event(
                    actor.name,
                    r,
                    "created",
                    f"rollout {name} of {product} {version} created: {len(targets)} devices "
                    f"in {len(groups)} groups",
                ),
            )
            return self._out(s, r)

    def _targets(self, s: Session, group: str | None, devices: Sequence[str]) -> list[str]:
        out: set[str] = set()
        if group is not None:
            g = s.scalar(select(Group).where(Group.name == group))
            if g is None:
                raise NotFoundError(f"unknown group {group!r}")
            out.update(
                s.scalars(select(device_groups.c.device_id).where(device_groups.c.group_id == g.id))
            )
        if devices:
            wanted = list(dict.fromkeys(devices))
            found: set[str] = set()
            for k in range(0, len(wanted), 1000):
                found.update(
                    s.scalars(select(Device.id).where(Device.id.in_(wanted[k : k + 1000])))
                )
            missing = [d for d in wanted if d not in found]
            if missing:
                raise NotFoundError(f"unknown device(s): {', '.join(missing[:5])}")
            out.update(wanted)
        return sorted(out)

    def get(self, name: str) -> dict[str, Any]:
        with self.registry.session() as s:
            return self._out(s, self._get(s, name))

    def all(self) -> list[dict[str, Any]]:
        with self.registry.session() as s:
            return [
                self._out(s, r)
                for r in s.scalars(select(FirmwareRollout).order_by(FirmwareRollout.id))
            ]

    # manual transitions -------------------------------------------------------------

    def pause(self, name: str, actor: Actor) -> dict[str, Any]:
        return self._manual(name, actor, {"running"}, "paused", "paused")

    def resume(self, name: str, actor: Actor) -> dict[str, Any]:
        with self.registry.session() as s:
            r = self._get(s, name)
            if r.state not in {"paused", "stopped"}:
                raise RolloutError(f"rollout {name} is {r.state}; only paused or stopped resume")
            r.state = "running"
            self.registry.record(
                s, _rollout_event(actor.name, r, "resumed", f"rollout {name} resumed")
            )
            transitions: list[str] = []
            self._evaluate(s, r, actor.name, transitions, ignore_errors=True)
            return self._out(s, r)

    def cancel(self, name: str, actor: Actor) -> dict[str, Any]:
        with self.registry.session() as s:
            r = self._get(s, name)
            if r.state in {"completed", "cancelled"}:
                raise RolloutError(f"rollout {name} is already {r.state}")
            r.state = "cancelled"
            s.execute(
                update(FirmwareDeployment)
                .where(
                    FirmwareDeployment.rollout_id == r.id,
                    FirmwareDeployment.state.in_(("waiting", "scheduled")),
                )
                .values(state="cancelled", updated_at=datetime.now(UTC))
            )
            self.registry.record(
                s, _rollout_event(actor.name, r, "cancelled", f"rollout {name} cancelled")
            )
            return self._out(s, r)

    def _manual(
        self, name: str, actor: Actor, allowed: set[str], new: str, transition: str
    ) -> dict[str, Any]:
        with self.registry.session() as s:
            r = self._get(s, name)
            if r.state not in allowed:
                raise RolloutError(f"rollout {name} is {r.state}; cannot {transition}")
            r.state = new
            self.registry.record(
                s, _rollout_event(actor.name, r, transition, f"rollout {name} {transition}")
            )
            return self._out(s, r)

    def rollback(self, name: str, actor: Actor) -> dict[str, Any]:
        """Cancel ``name`` and roll its devices back to the previous release."""
        with self.registry.session() as s:
            r = self._get(s, name)
            if r.previous_release_id is None:
                raise RolloutError(f"rollout {name} has no previous release to roll back to")
            prev = s.get(FirmwareRelease, r.previous_release_id)
            product = s.get(FirmwareProduct, r.product_id)
            assert prev is not None
            assert product is not None
            devices = list(
                s.scalars(
                    select(FirmwareDeployment.device_id).where(
                        FirmwareDeployment.rollout_id == r.id,
                        FirmwareDeployment.state.in_(("success", "failure", "proceeding")),
                    )
                )
            )
            success_threshold, error_threshold = r.success_threshold, r.error_threshold
        if r.state not in {"completed", "cancelled"}:
            self.cancel(name, actor)
        if not devices:
            raise RolloutError(f"no device of rollout {name} was updated; nothing to roll back")
        out = self.create(
            f"{name}-rollback",
            product.name,
            prev.version,
            actor,
            devices=devices,
            success_threshold=success_threshold,
            error_threshold=error_threshold,
            error_action="stop",
            _previous=None,
        )
        with self.registry.session() as s:
            r = self._get(s, name)
            self.registry.record(
                s,
                _rollout_event(
                    actor.name,
                    r,
                    "rolled_back",
                    f"rollout {name} rolled back to {prev.version} for {len(devices)} devices",
                ),
            )
        return out

    # feedback -----------------------------------------------------------------------

    def record_feedback(self, reports: Sequence[Feedback], actor: str = "ddi") -> FeedbackResult:
        """Apply device reports in one transaction (see module invariants)."""
        res = FeedbackResult()
        if not reports:
            return res
        with self.registry.session() as s:
            ids = list(dict.fromkeys(f.device_id for f in reports))
            open_rows: dict[str, tuple[int, int]] = {}
            for k in range(0, len(ids), 900):
                q = (
                    select(
                        FirmwareDeployment.device_id,
                        FirmwareDeployment.rollout_id,
                        FirmwareDeployment.group_index,
                    )
                    .join(FirmwareRollout, FirmwareRollout.id == FirmwareDeployment.rollout_id)
                    .where(
                        FirmwareDeployment.device_id.in_(ids[k : k + 900]),
                        FirmwareDeployment.state.in_(OPEN_STATES),
                        FirmwareRollout.state.in_(ACTIVE_ROLLOUT),
                    )
                )
                for dev, rid, gi in s.execute(q):
                    open_rows[dev] = (rid, gi)
            rollouts = {
                r.id: r
                for r in s.scalars(
                    select(FirmwareRollout).where(
                        FirmwareRollout.id.in_({v[0] for v in open_rows.values()})
                    )
                )
            }
            versions = {
                rid: s.scalar(
                    select(FirmwareRelease.version).where(FirmwareRelease.id == r.release_id)
                )
                for rid, r in rollouts.items()
            }
            counts: dict[int, list[dict[str, Any]]] = {
                rid: [dict(g) for g in r.groups] for rid, r in rollouts.items()
            }
            now = datetime.now(UTC)
            updates: list[dict[str, Any]] = []
            dev_updates: list[dict[str, Any]] = []
            events: list[dict[str, Any]] = []
            for f in reports:
                row = open_rows.get(f.device_id)
                if row is None or (f.rollout is not None and rollouts[row[0]].name != f.rollout):
                    res.ignored += 1
                    res.outcomes.append(False)
                    continue
                rid, gi = row
                res.applied += 1
                res.outcomes.append(True)
                detail = (f.detail or "")[:512] or None
                updates.append(
                    {"r": rid, "d": f.device_id, "state": f.status, "detail": detail, "at": now}
                )
                if f.status == "proceeding":
                    continue
                del open_rows[f.device_id]  # a second final report in the batch is ignored
                g = counts[rid][gi]
                g["succeeded" if f.status == "success" else "failed"] += 1
                version = versions[rid]
                if f.status == "success":
                    dev_updates.append({"d": f.device_id, "v": version})
                events.append(
                    {
                        "payload": device_config_change(
                            device_uid=f.device_id,
                            actor=f.actor or actor,
                            message=f"firmware {version} "
                            + ("installed and confirmed" if f.status == "success" else "failed")
                            + f" (rollout {rollouts[rid].name})",
                            changes={
                                "firmware_version": version,
                                "rollout": rollouts[rid].name,
                                "result": f.status,
                                "detail": detail,
                            },
                        ).to_ocsf(),
                        "created_at": now,
                    }
                )
            # One UPDATE per (rollout, state, detail) and per version, with IN lists, instead
            # of one statement per device: the batch's cost is then mostly its events.
            last: dict[tuple[int, str], dict[str, Any]] = {}
            for u in updates:
                last[(u["r"], u["d"])] = u
            grouped: dict[tuple[int, str, str | None], list[str]] = {}
            for u in last.values():
                grouped.setdefault((u["r"], u["state"], u["detail"]), []).append(u["d"])
            t: Any = FirmwareDeployment.__table__
            for (rid, state, detail), devs in grouped.items():
                for k in range(0, len(devs), 900):
                    s.execute(
                        t.update()
                        .where(t.c.rollout_id == rid, t.c.device_id.in_(devs[k : k + 900]))
                        .values(state=state, detail=detail, updated_at=now)
                    )
            by_version: dict[str, list[str]] = {}
            for du in dev_updates:
                by_version.setdefault(du["v"], []).append(du["d"])
            dt: Any = Device.__table__
            for version, devs in by_version.items():
                for k in range(0, len(devs), 900):
                    s.execute(
                        dt.update()
                        .where(dt.c.id.in_(devs[k : k + 900]))
                        .values(firmware_version=version, updated_at=now)
                    )
            if events:
                # Core insert: the ORM bulk path costs more than the rest of the batch.
                outbox: Any = OutboxEvent.__table__
                s.execute(outbox.insert(), events)
            for rid, r in rollouts.items():
                if counts[rid] != r.groups:
                    r.groups = counts[rid]
                    self._evaluate(s, r, actor, res.transitions)
        return res

    def _evaluate(
        self,
        s: Session,
        r: FirmwareRollout,
        actor: str,
        transitions: list[str],
        *,
        ignore_errors: bool = False,
    ) -> None:
        """Apply thresholds to the current group; may advance, pause, stop or complete."""
        while r.state == "running":
            groups = [dict(g) for g in r.groups]
            g = groups[r.current_group]
            size = max(int(g["size"]), 1)
            if not ignore_errors and g["failed"] * 100 >= r.error_threshold * size:
                r.state = "paused" if r.error_action == "pause" else "stopped"
                t = "paused_on_errors" if r.state == "paused" else "stopped"
                transitions.append(f"{r.name}:{t}")
                self.registry.record(
                    s,
                    _rollout_event(
                        actor,
                        r,
                        t,
                        f"rollout {r.name} {r.state}: group {r.current_group} has "
                        f"{g['failed']}/{g['size']} failures (threshold {r.error_threshold}%)",
                    ),
                )
                return
            if g["succeeded"] * 100 < r.success_threshold * size:
                return
            g["state"] = "succeeded"
            if r.current_group + 1 >= len(groups):
                r.groups = groups
                r.state = "completed"
                transitions.append(f"{r.name}:completed")
                self.registry.record(
                    s, _rollout_event(actor, r, "completed", f"rollout {r.name} completed")
                )
                return
            r.current_group += 1
            groups[r.current_group]["state"] = "running"
            r.groups = groups
            s.execute(
                update(FirmwareDeployment)
                .where(
                    FirmwareDeployment.rollout_id == r.id,
                    FirmwareDeployment.group_index == r.current_group,
                    FirmwareDeployment.state == "waiting",
                )
                .values(state="scheduled", updated_at=datetime.now(UTC))
            )
            transitions.append(f"{r.name}:group{r.current_group}")
            self.registry.record(
                s,
                _rollout_event(
                    actor,
                    r,
                    "group_started",
                    f"rollout {r.name}: group {r.current_group - 1} reached "
                    f"{r.success_threshold}%, group {r.current_group} started",
                ),
            )
            ignore_errors = False

    # device view --------------------------------------------------------------------

    def pending_for(self, device_id: str) -> dict[str, Any] | None:
        """The deployment a device should install now, or None."""
        with self.registry.session() as s:
            q = (
                select(FirmwareDeployment, FirmwareRollout, FirmwareRelease, FirmwareProduct)
                .join(FirmwareRollout, FirmwareRollout.id == FirmwareDeployment.rollout_id)
                .join(FirmwareRelease, FirmwareRelease.id == FirmwareRollout.release_id)
                .join(FirmwareProduct, FirmwareProduct.id == FirmwareRollout.product_id)
                .where(
                    FirmwareDeployment.device_id == device_id,
                    FirmwareDeployment.state.in_(OPEN_STATES),
                    FirmwareRollout.state == "running",
                )
                .order_by(FirmwareRollout.id.desc())
                .limit(1)
            )
            row = s.execute(q).first()
            if row is None:
                return None
            dep, r, rel, prod = row
            return {
                "action_id": r.id,
                "rollout": r.name,
                "product": prod.name,
                "version": rel.version,
                "security_counter": rel.security_counter,
                "target_name": rel.target_name,
                "size": rel.size,
                "sha256": rel.sha256,
                "state": dep.state,
            }

    def deployment_state(self, rollout: str) -> dict[str, int]:
        from sqlalchemy import func

        with self.registry.session() as s:
            r = self._get(s, rollout)
            rows = s.execute(
                select(FirmwareDeployment.state, func.count())
                .where(FirmwareDeployment.rollout_id == r.id)
                .group_by(FirmwareDeployment.state)
            )
            return {st: int(n) for st, n in rows}


class FeedbackBatcher:
    """Groups concurrent device reports into one ``record_feedback`` transaction.

    The DDI route awaits :meth:`submit`; a single task drains the queue, waiting at most
    ``linger`` seconds after the first report for up to ``max_batch`` reports. Each
    caller learns whether its own report was applied. One transaction per batch instead
    of per request is what lets one database absorb a fleet reporting at once.
    """

    def __init__(self, service: RolloutService, *, max_batch: int = 1000, linger: float = 0.02):
        self.service = service
        self.max_batch = max_batch
        self.linger = linger
        self._queue: asyncio.Queue[tuple[Feedback, asyncio.Future[bool]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="firmware-feedback-batcher")

    async def submit(self, report: Feedback) -> bool:
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        await self._queue.put((report, fut))
        return await fut

    async def _run(self) -> None:
        from starlette.concurrency import run_in_threadpool

        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.linger
            while len(batch) < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), timeout))
                except TimeoutError:
                    break
            try:
                res = await run_in_threadpool(self.service.record_feedback, [r for r, _ in batch])
            except Exception as exc:  # the callers get the error; the batcher lives on
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), ok in zip(batch, res.outcomes, strict=True):
                if not fut.done():
                    fut.set_result(ok)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            _, fut = self._queue.get_nowait()
            if not fut.done():
                fut.cancel()
