"""The registry service: every read and change of fleet data goes through here.

Invariants:
- each change and the events describing it commit in one transaction (the event goes to
  the outbox table and is relayed to the bus by the running service), so no change
  happens without its audit record, whichever process (API, CLI, worker) made it;
- input arrives already validated by ``registry.schemas``; this module enforces
  cross-object rules (unknown ids, duplicates, group existence);
- a failed operation leaves no partial write.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from fleetwarden.errors import AuthError, ConflictError, NotFoundError
from fleetwarden.events import Activity, Event, Status, api_activity
from fleetwarden.registry import schemas
from fleetwarden.registry.db import WalCheckpointer, create_db_engine, migrate
from fleetwarden.registry.models import ApiToken, Device, Group, OutboxEvent, device_groups

TOKEN_PREFIX = "fwt"  # noqa: S105 (a prefix, not a secret)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asks for a change: ``token:<id>/<name>`` over the API, ``cli:<user>`` locally."""

    name: str
    src_ip: str | None = None
    via: str = "cli"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated API caller."""

    token_id: str
    name: str
    role: schemas.Role

    def actor(self, src_ip: str | None) -> Actor:
        return Actor(name=f"token:{self.token_id}/{self.name}", src_ip=src_ip, via="api")


def _device_out(d: Device) -> schemas.DeviceOut:
    return schemas.DeviceOut(
        device_id=d.id,
        model=d.model,
        hardware_revision=d.hardware_revision,
        risk_class=schemas.RiskClass(d.risk_class),
        sector=d.sector,
        firmware_version=d.firmware_version,
        key_storage=schemas.KeyStorage(d.key_storage),
        apn=schemas.ApnKind(d.apn) if d.apn else None,
        ip=d.ip,
        ip_fixed=d.ip_fixed,
        allowed_cidrs=list(d.allowed_cidrs or []),
        vlan=d.vlan,
        groups=[g.name for g in d.groups],
        status=d.status,
        attributes=dict(d.attributes or {}),
        created_at=_aware(d.created_at),
        updated_at=_aware(d.updated_at),
    )


def _aware(ts: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything stored is UTC.
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def _token_out(t: ApiToken) -> schemas.TokenOut:
    return schemas.TokenOut(
        id=t.id,
        name=t.name,
        role=schemas.Role(t.role),
        created_at=_aware(t.created_at),
        expires_at=_aware(t.expires_at) if t.expires_at else None,
        revoked_at=_aware(t.revoked_at) if t.revoked_at else None,
        last_used_at=_aware(t.last_used_at) if t.last_used_at else None,
    )


def hash_secret(secret: str) -> str:
    # Tokens carry 256 random bits, so a plain SHA-256 is not brute-forceable; no salt or
    # slow KDF is needed (and lookups stay O(1) by token id).
    return hashlib.sha256(secret.encode()).hexdigest()


class Registry:
    """Fleet registry on one database (SQLite by default, PostgreSQL by URL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        #: SQLite on a file: its WAL is checkpointed off the committing threads
        self.checkpointer = WalCheckpointer.for_engine(engine)

    @classmethod
    def open(cls, url: str, *, upgrade: bool = True) -> Registry:
        engine = create_db_engine(url)
        if upgrade:
            migrate(engine)
        return cls(engine)

    def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.close()
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as s, s.begin():
            yield s

    @staticmethod
    def record(session: Session, event: Event) -> None:
        """Queue an event in the outbox, inside the caller's transaction."""
        session.add(OutboxEvent(payload=event.to_ocsf()))

    def _audit(
        self,
        s: Session,
        actor: Actor,
        operation: str,
        activity: Activity,
        message: str,
        *,
        resources: list[dict[str, Any]],
        device_uid: str | None = None,
        status: Status = Status.SUCCESS,
    ) -> None:
        self.record(
            s,
            api_activity(
                operation=operation,
                activity=activity,
                actor=actor.name,
                message=message,
                status=status,
                resources=resources,
                src_ip=actor.src_ip,
                device_uid=device_uid,
            ),
        )

    def record_denied(self, actor: Actor, operation: str, reason: str) -> None:
        """Record a refused call (bad token, missing role) in its own transaction."""
        with self.session() as s:
            self._audit(
                s,
                actor,
                operation,
                Activity.OTHER,
                f"refused: {reason}",
                resources=[],
                status=Status.FAILURE,
            )

    # devices -------------------------------------------------------------------------

    def _groups_by_name(self, s: Session, names: Sequence[str]) -> list[Group]:
        if not names:
            return []
        found = {g.name: g for g in s.scalars(select(Group).where(Group.name.in_(names)))}
        missing = [n for n in names if n not in found]
        if missing:
            raise NotFoundError(f"unknown group(s): {', '.join(sorted(set(missing)))}")
        return [found[n] for n in dict.fromkeys(names)]

    def add_device(self, data: schemas.DeviceCreate, actor: Actor) -> schemas.DeviceOut:
        with self.session() as s:
            if s.get(Device, data.id) is not None:
                raise ConflictError(f"device {data.id!r} already exists")
            dev = Device(
                id=data.id,
                model=data.model,
                hardware_revision=data.hardware_revision,
                risk_class=(data.risk_class or schemas.RiskClass.MEDIUM).value,
                sector=data.sector,
                firmware_version=data.firmware_version,
                key_storage=(data.key_storage or schemas.KeyStorage.UNKNOWN).value,
                apn=data.apn.value if data.apn else None,
                ip=data.ip,
                ip_fixed=bool(data.ip_fixed),
                allowed_cidrs=list(data.allowed_cidrs or []),
                vlan=data.vlan,
                attributes=dict(data.attributes or {}),
                status="active",
            )
            dev.groups = self._groups_by_name(s, data.groups or [])
            s.add(dev)
            self._audit(
                s,
                actor,
                "device.add",
                Activity.CREATE,
                f"device {data.id} added",
                resources=[{"type": "device", "uid": data.id}],
                device_uid=data.id,
            )
            try:
                s.flush()
            except IntegrityError as exc:
                raise ConflictError(f"device {data.id!r} already exists") from exc
            return _device_out(dev)

    def get_device(self, device_id: str) -> schemas.DeviceOut:
        with self.session() as s:
            dev = s.get(Device, device_id)
            if dev is None:
                raise NotFoundError(f"unknown device {device_id!r}")
            return _device_out(dev)

    def list_devices(
        self, *, group: str | None = None, after: str | None = None, limit: int = 100
    ) -> list[schemas.DeviceOut]:
        """Devices ordered by id, keyset-paginated with ``after`` (the last id seen)."""
        with self.session() as s:
            q = select(Device).order_by(Device.id).limit(limit)
            if after is not None:
                q = q.where(Device.id > after)
            if group is not None:
                g = s.scalar(select(Group).where(Group.name == group))
                if g is None:
                    raise NotFoundError(f"unknown group {group!r}")
                q = q.join(device_groups, device_groups.c.device_id == Device.id).where(
                    device_groups.c.group_id == g.id
                )
            return [_device_out(d) for d in s.scalars(q)]

    def count_devices(self) -> int:
        with self.session() as s:
            return int(s.scalar(select(func.count()).select_from(Device)) or 0)

    def update_device(
        self, device_id: str, data: schemas.DeviceUpdate, actor: Actor
    ) -> schemas.DeviceOut:
        changes = data.model_dump(exclude_unset=True)
        with self.session() as s:
            dev = s.get(Device, device_id)
            if dev is None:
                raise NotFoundError(f"unknown device {device_id!r}")
            for key, value in changes.items():
                if key == "groups":
                    dev.groups = self._groups_by_name(s, value or [])
                elif key in {"risk_class", "key_storage"} and value is None:
                    continue  # these have defaults; null means "leave as is"
                elif key == "allowed_cidrs":
                    dev.allowed_cidrs = list(value or [])
                elif key == "attributes":
                    dev.attributes = dict(value or {})
                else:
                    setattr(dev, key, value.value if hasattr(value, "value") else value)
            self._audit(
                s,
                actor,
                "device.update",
                Activity.UPDATE,
                f"device {device_id} updated: {', '.join(sorted(changes)) or 'nothing'}",
                resources=[
                    {"type": "device", "uid": device_id, "data": {"changed": sorted(changes)}}
                ],
                device_uid=device_id,
            )
            s.flush()
            return _device_out(dev)

    def remove_device(self, device_id: str, actor: Actor) -> None:
        with self.session() as s:
            dev = s.get(Device, device_id)
            if dev is None:
                raise NotFoundError(f"unknown device {device_id!r}")
            s.delete(dev)
            self._audit(
                s,
                actor,
                "device.remove",
                Activity.DELETE,
                f"device {device_id} removed",
                resources=[{"type": "device", "uid": device_id}],
                device_uid=device_id,
            )

    def import_devices(
        self,
        stream: BinaryIO,
        *,
        fmt: str,
        actor: Actor,
        batch_size: int = 5000,
        progress: Any = None,
        source: str = "upload",
        size_hint: int | None = None,
        workers: int | None = None,
    ) -> schemas.ImportResult:
        """Import devices, all or nothing; see ``registry.importer`` for the format."""
        from fleetwarden.registry.importer import import_stream

        return import_stream(
            self,
            stream,
            fmt=fmt,
            actor=actor,
            batch_size=batch_size,
            progress=progress,
            source=source,
            size_hint=size_hint,
            workers=workers,
        )

    # groups --------------------------------------------------------------------------

    def _group_out(self, s: Session, g: Group) -> schemas.GroupOut:
        count = s.scalar(
            select(func.count()).select_from(device_groups).where(device_groups.c.group_id == g.id)
        )
        return schemas.GroupOut(
            name=g.name,
            description=g.description,
            allowed_cidrs=list(g.allowed_cidrs or []),
            vlan=g.vlan,
            device_count=int(count or 0),
            created_at=_aware(g.created_at),
        )

    def _group(self, s: Session, name: str) -> Group:
        g = s.scalar(select(Group).where(Group.name == name))
        if g is None:
            raise NotFoundError(f"unknown group {name!r}")
        return g

    def create_group(self, data: schemas.GroupCreate, actor: Actor) -> schemas.GroupOut:
        with self.session() as s:
            if s.scalar(select(Group.id).where(Group.name == data.name)) is not None:
                raise ConflictError(f"group {data.name!r} already exists")
            g = Group(
                name=data.name,
                description=data.description,
                allowed_cidrs=list(data.allowed_cidrs),
                vlan=data.vlan,
            )
            s.add(g)
            self._audit(
                s,
                actor,
                "group.create",
                Activity.CREATE,
                f"group {data.name} created",
                resources=[{"type": "group", "uid": data.name}],
            )
            try:
                s.flush()
            except IntegrityError as exc:
                raise ConflictError(f"group {data.name!r} already exists") from exc
            return self._group_out(s, g)

    def get_group(self, name: str) -> schemas.GroupOut:
        with self.session() as s:
            return self._group_out(s, self._group(s, name))

    def list_groups(self) -> list[schemas.GroupOut]:
        with self.session() as s:
            counts = {
                gid: n
                for gid, n in s.execute(
                    select(device_groups.c.group_id, func.count()).group_by(
                        device_groups.c.group_id
                    )
                )
            }
            return [
                schemas.GroupOut(
                    name=g.name,
                    description=g.description,
                    allowed_cidrs=list(g.allowed_cidrs or []),
                    vlan=g.vlan,
                    device_count=int(counts.get(g.id, 0)),
                    created_at=_aware(g.created_at),
                )
                for g in s.scalars(select(Group).order_by(Group.name))
            ]

    def update_group(self, name: str, data: schemas.GroupUpdate, actor: Actor) -> schemas.GroupOut:
        changes = data.model_dump(exclude_unset=True)
        with self.session() as s:
            g = self._group(s, name)
            for key, value in changes.items():
                setattr(g, key, list(value or []) if key == "allowed_cidrs" else value)
            self._audit(
                s,
                actor,
                "group.update",
                Activity.UPDATE,
                f"group {name} updated: {', '.join(sorted(changes)) or 'nothing'}",
                resources=[{"type": "group", "uid": name}],
            )
            s.flush()
            return self._group_out(s, g)

    def remove_group(self, name: str, actor: Actor) -> None:
        with self.session() as s:
            g = self._group(s, name)
            s.execute(delete(device_groups).where(device_groups.c.group_id == g.id))
            s.delete(g)
            self._audit(
                s,
                actor,
                "group.remove",
                Activity.DELETE,
                f"group {name} removed",
                resources=[{"type": "group", "uid": name}],
            )

    def set_membership(self, name: str, device_id: str, member: bool, actor: Actor) -> None:
        with self.session() as s:
            g = self._group(s, name)
            dev = s.get(Device, device_id)
            if dev is None:
                raise NotFoundError(f"unknown device {device_id!r}")
            present = any(x.id == g.id for x in dev.groups)
            if member and not present:
                dev.groups.append(g)
            elif not member and present:
                dev.groups = [x for x in dev.groups if x.id != g.id]
            verb = "added to" if member else "removed from"
            self._audit(
                s,
                actor,
                "group.member.add" if member else "group.member.remove",
                Activity.UPDATE,
                f"device {device_id} {verb} group {name}",
                resources=[{"type": "group", "uid": name}, {"type": "device", "uid": device_id}],
                device_uid=device_id,
            )

    # API tokens ----------------------------------------------------------------------

    def create_token(self, data: schemas.TokenCreate, actor: Actor) -> schemas.TokenCreated:
        token_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        tok = ApiToken(
            id=token_id,
            name=data.name,
            role=data.role.value,
            secret_hash=hash_secret(secret),
            created_at=now,
            expires_at=now + timedelta(days=data.expires_days) if data.expires_days else None,
        )
        with self.session() as s:
            s.add(tok)
            self._audit(
                s,
                actor,
                "token.create",
                Activity.CREATE,
                f"API token {token_id} ({data.name}, role {data.role.value}) created",
                resources=[{"type": "api_token", "uid": token_id}],
            )
        out = _token_out(tok)
        return schemas.TokenCreated(**out.model_dump(), token=f"{TOKEN_PREFIX}_{token_id}_{secret}")

    def list_tokens(self) -> list[schemas.TokenOut]:
        with self.session() as s:
            return [
                _token_out(t) for t in s.scalars(select(ApiToken).order_by(ApiToken.created_at))
            ]

    def revoke_token(self, token_id: str, actor: Actor) -> schemas.TokenOut:
        with self.session() as s:
            tok = s.get(ApiToken, token_id)
            if tok is None:
                raise NotFoundError(f"unknown token {token_id!r}")
            if tok.revoked_at is None:
                tok.revoked_at = datetime.now(UTC)
            self._audit(
                s,
                actor,
                "token.revoke",
                Activity.DELETE,
                f"API token {token_id} revoked",
                resources=[{"type": "api_token", "uid": token_id}],
            )
            return _token_out(tok)

    def authenticate(self, presented: str) -> Principal:
        """Check a bearer token; raise ``AuthError`` with a reason that leaks nothing."""
        parts = presented.split("_", 2)
        if len(parts) != 3 or parts[0] != TOKEN_PREFIX or len(presented) > 200:
            raise AuthError("malformed API token")
        _, token_id, secret = parts
        now = datetime.now(UTC)
        with self.session() as s:
            tok = s.get(ApiToken, token_id)
            if tok is None or not hmac.compare_digest(tok.secret_hash, hash_secret(secret)):
                raise AuthError("unknown API token")
            if tok.revoked_at is not None:
                raise AuthError("API token revoked")
            if tok.expires_at is not None and _aware(tok.expires_at) <= now:
                raise AuthError("API token expired")
            # Coarse last-use stamp: one write a minute per token at most.
            if tok.last_used_at is None or now - _aware(tok.last_used_at) > timedelta(minutes=1):
                tok.last_used_at = now
            return Principal(token_id=tok.id, name=tok.name, role=schemas.Role(tok.role))

    # outbox --------------------------------------------------------------------------

    def pending_events(self, limit: int = 500) -> list[tuple[int, dict[str, Any]]]:
        with self.session() as s:
            rows = s.execute(
                select(OutboxEvent.id, OutboxEvent.payload)
                .where(OutboxEvent.relayed_at.is_(None))
                .order_by(OutboxEvent.id)
                .limit(limit)
            )
            return [(int(i), dict(p)) for i, p in rows]

    def mark_relayed(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        from sqlalchemy import update

        with self.session() as s:
            s.execute(
                update(OutboxEvent)
                .where(OutboxEvent.id.in_(list(ids)))
                .values(relayed_at=datetime.now(UTC))
            )
