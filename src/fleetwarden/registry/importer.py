"""Bulk import of devices from CSV or JSON Lines, streamed and batched.

Invariants:
- the whole file is one transaction: either every row is written or none is;
- memory stays flat in the file size (rows are read, validated and written in batches;
  only the set of seen ids grows, a few dozen bytes per device);
- every problem is reported with its line number; after the first problem nothing more
  is written, but validation goes on (up to ``MAX_PROBLEMS``) so one run shows many
  problems at once;
- only ``device_id`` is required; unknown columns are kept as device attributes.

Format: columns device_id, model, hardware_revision, risk_class, sector,
firmware_version, key_storage, apn, ip, ip_fixed, allowed_cidrs, vlan, groups. Lists in a
CSV cell are separated by ``;``; booleans are ``true``/``false``; an empty cell is null.
Groups named in the file are created when missing.
"""

from __future__ import annotations

import csv
import io
import json
import queue
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, BinaryIO

import psycopg
import pydantic
from sqlalchemy import Connection, insert, select
from sqlalchemy.exc import IntegrityError

from fleetwarden.errors import ConflictError, ImportRejectedError, ValidationError
from fleetwarden.events import Activity
from fleetwarden.registry.models import Device, Group, OutboxEvent
from fleetwarden.registry.schemas import DeviceCreate, ImportResult, explain

if TYPE_CHECKING:
    from fleetwarden.registry.service import Actor, Registry

MAX_PROBLEMS = 100
MAX_FIELD = 64 * 1024
MAX_LINE = 256 * 1024
KNOWN = {
    "device_id",
    "model",
    "hardware_revision",
    "risk_class",
    "sector",
    "firmware_version",
    "key_storage",
    "apn",
    "ip",
    "ip_fixed",
    "allowed_cidrs",
    "vlan",
    "groups",
}
#: devices columns in the order the bulk writers send them
COLUMNS = (
    "id",
    "model",
    "hardware_revision",
    "risk_class",
    "sector",
    "firmware_version",
    "key_storage",
    "apn",
    "ip",
    "ip_fixed",
    "allowed_cidrs",
    "vlan",
    "status",
    "attributes",
    "created_at",
    "updated_at",
)
LIST_COLUMNS = {"allowed_cidrs", "groups"}
BOOL_COLUMNS = {"ip_fixed"}
FORMATS = {"csv", "jsonl"}

Progress = Callable[[int], None]


class _CountingReader(io.RawIOBase):
    """Counts bytes read so a progress bar can follow a stream of unknown origin."""

    def __init__(self, raw: BinaryIO, progress: Progress | None) -> None:
        self._raw = raw
        self._progress = progress

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._raw.read(len(b))
        n = len(data)
        b[:n] = data
        if self._progress is not None and n:
            self._progress(n)
        return n


def _text(value: str) -> str | None:
    return value.strip() or None


def _list(value: str) -> list[str] | None:
    items = [p.strip() for p in value.split(";")]
    return [p for p in items if p] or None


def _bool_cell(column: str) -> Callable[[str], bool | None]:
    def convert(value: str) -> bool | None:
        low = value.strip().lower()
        if low in {"true", "1", "yes"}:
            return True
        if low in {"false", "0", "no"}:
            return False
        if low == "":
            return None
        raise ValueError(f"{column}: expected true or false, got {value[:40]!r}")

    return convert


def _converter(column: str) -> Callable[[str], Any]:
    if column in LIST_COLUMNS:
        return _list
    if column in BOOL_COLUMNS:
        return _bool_cell(column)
    return _text


def _split(raw: dict[str, Any]) -> dict[str, Any]:
    """Known columns as fields, every other column kept under ``attributes``."""
    out: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in raw.items():
        if key in KNOWN:
            if value is not None:
                out[key] = value
        elif key == "attributes" and isinstance(value, dict):
            extra.update(value)
        elif value is not None and value != "":
            extra[str(key)] = value
    if extra:
        out["attributes"] = extra
    return out


def _rows_csv(text: io.TextIOBase) -> Iterator[tuple[int, dict[str, Any] | str]]:
    old_limit = csv.field_size_limit()
    csv.field_size_limit(MAX_FIELD)
    try:
        reader = csv.reader(text)
        try:
            header = next(reader)
        except StopIteration:
            return
        header = [h.strip().lstrip("\ufeff") for h in header]
        if "device_id" not in header:
            yield 1, "header has no device_id column"
            return
        if len(set(header)) != len(header):
            yield 1, "header repeats a column name"
            return
        plan = [(h, h in KNOWN, _converter(h)) for h in header]
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield reader.line_num, f"unreadable CSV: {exc}"
                return
            line = reader.line_num
            if not cells or (len(cells) == 1 and cells[0].strip() == ""):
                continue
            if len(cells) != len(header):
                yield line, f"expected {len(header)} cells, found {len(cells)}"
                continue
            # Build the model input directly: known columns as fields, the rest as
            # attributes; empty cells are left out (null).
            row: dict[str, Any] = {}
            extra: dict[str, Any] = {}
            try:
                for (name, known, convert), cell in zip(plan, cells, strict=True):
                    value = convert(cell)
                    if value is not None:
                        (row if known else extra)[name] = value
            except ValueError as exc:
                yield line, str(exc)
                continue
            if extra:
                row["attributes"] = extra
            yield line, row
    finally:
        csv.field_size_limit(old_limit)


def _rows_jsonl(text: io.TextIOBase) -> Iterator[tuple[int, dict[str, Any] | str]]:
    line_no = 0
    while True:
        line = text.readline(MAX_LINE + 1)
        if not line:
            return
        line_no += 1
        if len(line) > MAX_LINE and not line.endswith("\n"):
            yield line_no, f"line longer than {MAX_LINE} characters"
            return
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield line_no, f"invalid JSON: {exc.msg} at column {exc.colno}"
            continue
        if not isinstance(obj, dict):
            yield line_no, "each line must be a JSON object"
            continue
        yield line_no, _split(obj)


def _describe(exc: pydantic.ValidationError) -> str:
    return "; ".join(explain(err) for err in exc.errors()[:3])


class _Writer:
    """Writes validated batches inside one open transaction."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.pg = conn.dialect.name == "postgresql"
        self.group_ids: dict[str, int] = {
            name: gid for gid, name in conn.execute(select(Group.id, Group.name))
        }
        self.groups_created = 0

    def existing(self, ids: list[str]) -> set[str]:
        if self.pg:
            # one array parameter instead of thousands of bound values
            rows = self.conn.exec_driver_sql("SELECT id FROM devices WHERE id = ANY(%s)", (ids,))
            return {r[0] for r in rows}
        return set(self.conn.execute(select(Device.id).where(Device.id.in_(ids))).scalars())

    def _group_id(self, name: str, now: datetime) -> int:
        gid = self.group_ids.get(name)
        if gid is None:
            gid = int(
                self.conn.execute(
                    insert(Group)
                    .values(name=name, allowed_cidrs=[], created_at=now)
                    .returning(Group.id)
                ).scalar_one()
            )
            self.group_ids[name] = gid
            self.groups_created += 1
        return gid

    def write(self, batch: list[DeviceCreate]) -> None:
        now = datetime.now(UTC)
        rows = []
        links = []
        for d in batch:
            rows.append(
                (
                    d.id,
                    d.model,
                    d.hardware_revision,
                    d.risk_class.value if d.risk_class else "medium",
                    d.sector,
                    d.firmware_version,
                    d.key_storage.value if d.key_storage else "unknown",
                    d.apn.value if d.apn else None,
                    d.ip,
                    bool(d.ip_fixed),
                    json.dumps(d.allowed_cidrs) if d.allowed_cidrs else "[]",
                    d.vlan,
                    "active",
                    json.dumps(d.attributes) if d.attributes else "{}",
                )
            )
            for name in dict.fromkeys(d.groups or []):
                links.append((d.id, self._group_id(name, now)))
        if self.pg:
            self._copy(rows, links, now)
        else:
            # Straight to the driver's executemany: the ORM and Core layers cost more
            # than SQLite itself at this volume.
            ts = self._ts(now)
            self.conn.exec_driver_sql(self._sql, [(*r, ts, ts) for r in rows])
            if links:
                self.conn.exec_driver_sql(
                    "INSERT INTO device_groups (device_id, group_id) VALUES (?, ?)", links
                )

    def _ts(self, now: datetime) -> Any:
        proc = Device.__table__.c.created_at.type.bind_processor(self.conn.dialect)
        return proc(now) if proc else now

    @property
    def _sql(self) -> str:
        cols = ", ".join(COLUMNS)
        marks = ", ".join("?" * len(COLUMNS))
        return f"INSERT INTO devices ({cols}) VALUES ({marks})"  # noqa: S608 (fixed names)

    def _copy(
        self, rows: list[tuple[Any, ...]], links: list[tuple[str, int]], now: datetime
    ) -> None:
        # COPY is PostgreSQL's bulk path: an order of magnitude above INSERT batches.
        raw = self.conn.connection.driver_connection
        assert raw is not None
        with raw.cursor() as cur:
            with cur.copy(f"COPY devices ({', '.join(COLUMNS)}) FROM STDIN") as cp:
                for r in rows:
                    cp.write_row((*r, now, now))
            if links:
                with cur.copy("COPY device_groups (device_id, group_id) FROM STDIN") as cp:
                    for link in links:
                        cp.write_row(link)


class _WriterThread:
    """Runs the writer's batches on one thread, in submission order."""

    def __init__(self, writer: _Writer, problems: list[tuple[int, str]]) -> None:
        self.writer = writer
        self.problems = problems
        self.devices = 0
        self.error: BaseException | None = None
        self._queue: queue.Queue[tuple[list[DeviceCreate], list[int]] | None] = queue.Queue(2)
        self._thread = threading.Thread(target=self._run, name="import-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, batch: list[DeviceCreate], lines: list[int]) -> None:
        self._queue.put((batch, lines))

    def finish(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self.error is not None:
                continue  # drain, so the producer never blocks on a dead consumer
            try:
                self._write(*item)
            except BaseException as exc:
                self.error = exc

    def _write(self, batch: list[DeviceCreate], lines: list[int]) -> None:
        clash = self.writer.existing([d.id for d in batch])
        for d, ln in zip(batch, lines, strict=True):
            if d.id in clash:
                self.problems.append((ln, f"device {d.id!r} already exists"))
        if self.problems:
            return  # the import will be rolled back; keep checking, stop writing
        try:
            self.writer.write(batch)
        except (IntegrityError, psycopg.IntegrityError) as exc:
            # another writer inserted one of these ids since the check above
            raise ConflictError(f"import conflicts with a concurrent change: {exc}") from exc
        self.devices += len(batch)


def import_stream(
    registry: Registry,
    stream: BinaryIO,
    *,
    fmt: str,
    actor: Actor,
    batch_size: int = 5000,
    progress: Progress | None = None,
    source: str = "upload",
) -> ImportResult:
    if fmt not in FORMATS:
        raise ValidationError(f"unknown import format {fmt!r} (use csv or jsonl)")
    raw = io.BufferedReader(_CountingReader(stream, progress), buffer_size=1 << 20)
    text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="strict", newline="")
    rows = _rows_csv(text) if fmt == "csv" else _rows_jsonl(text)

    problems: list[tuple[int, str]] = []
    seen: set[str] = set()
    batch: list[DeviceCreate] = []
    batch_lines: list[int] = []
    last_line = 0
    with registry.engine.begin() as conn:
        writer = _Writer(conn)
        # Parsing and validation (this thread) overlap with the database work (the
        # writer thread, which alone uses the connection, in order): on two cores the
        # database server and the validator run side by side. The queue is bounded, so
        # memory stays flat.
        pipe = _WriterThread(writer, problems)
        pipe.start()
        try:
            for line, item in rows:
                last_line = line
                if isinstance(item, str):
                    problems.append((line, item))
                else:
                    try:
                        dev = DeviceCreate.model_validate(item)
                    except pydantic.ValidationError as exc:
                        problems.append((line, _describe(exc)))
                    else:
                        if dev.id in seen:
                            problems.append((line, f"duplicate device_id {dev.id!r} in file"))
                        else:
                            seen.add(dev.id)
                            batch.append(dev)
                            batch_lines.append(line)
                if len(problems) >= MAX_PROBLEMS:
                    break
                if len(batch) >= batch_size:
                    pipe.submit(batch, batch_lines)
                    batch, batch_lines = [], []
            else:
                if batch:
                    pipe.submit(batch, batch_lines)
        except UnicodeDecodeError as exc:
            problems.append((last_line + 1, f"not UTF-8 text: {exc.reason}"))
        finally:
            pipe.finish()
        devices = pipe.devices
        # Raising inside ``engine.begin()`` rolls the whole import back.
        if problems:
            problems.sort()
            raise ImportRejectedError(
                problems[:MAX_PROBLEMS], truncated=len(problems) >= MAX_PROBLEMS
            )
        if devices == 0 and last_line == 0:
            raise ValidationError("import file is empty")
        from fleetwarden.events import api_activity

        event = api_activity(
            operation="device.import",
            activity=Activity.CREATE,
            actor=actor.name,
            src_ip=actor.src_ip,
            message=f"{devices} devices imported from {source}",
            resources=[{"type": "import", "uid": source, "data": {"devices": devices}}],
        )
        conn.execute(
            insert(OutboxEvent).values(payload=event.to_ocsf(), created_at=datetime.now(UTC))
        )
    return ImportResult(devices=devices, groups_created=writer.groups_created, lines=last_line)


def detect_format(name: str) -> str:
    low = name.lower()
    if low.endswith(".csv"):
        return "csv"
    if low.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    raise ValidationError(f"cannot tell the format of {name!r}: use .csv or .jsonl, or --format")
