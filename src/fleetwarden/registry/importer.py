"""Bulk import of devices from CSV or JSON Lines, streamed and batched.

Invariants:
- the whole file is one transaction: either every row is written or none is;
- memory stays flat in the file size (rows are read, validated and written in chunks;
  only the set of seen ids grows, a few dozen bytes per device);
- every problem is reported with its line number; after the first problem nothing more
  is written, but validation goes on (up to ``MAX_PROBLEMS``) so one run shows many
  problems at once;
- only ``device_id`` is required; unknown columns are kept as device attributes;
- validation is the same code whether it runs inline or in worker processes.

Pipeline: the calling thread reads raw records (CSV cells or JSON lines) and groups them
in chunks; chunks are validated (``_validate_chunk``: cell conversion, pydantic, row
tuples) inline for small inputs or by a pool of worker processes for large ones, in
order; the calling thread checks duplicates and writes each chunk on the one database
connection of the import's transaction. Validation is most of the CPU cost, so on a
multi-core machine it runs beside the database work instead of before it.

Format: columns device_id, model, hardware_revision, risk_class, sector,
firmware_version, key_storage, apn, ip, ip_fixed, allowed_cidrs, vlan, groups. Lists in a
CSV cell are separated by ``;``; booleans are ``true``/``false``; an empty cell is null.
Groups named in the file are created when missing.
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, BinaryIO

import psycopg
import pydantic
from sqlalchemy import Connection, insert, select
from sqlalchemy.exc import IntegrityError

from fleetwarden.errors import ConflictError, ImportRejectedError, ValidationError
from fleetwarden.events import Activity, api_activity
from fleetwarden.registry.models import Device, Group, OutboxEvent
from fleetwarden.registry.schemas import DeviceCreate, ImportResult, explain

if TYPE_CHECKING:
    from fleetwarden.registry.service import Actor, Registry

MAX_PROBLEMS = 100
MAX_FIELD = 64 * 1024
MAX_LINE = 256 * 1024
#: inputs at least this large are validated by worker processes (when cores allow)
PARALLEL_BYTES = 8 << 20
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
#: the import columns: the devices columns a user sets, named as in the API, plus groups
KNOWN = frozenset(
    {"device_id", "groups"}
    | set(COLUMNS) - {"id", "status", "attributes", "created_at", "updated_at"}
)
LIST_COLUMNS = {"allowed_cidrs", "groups"}
BOOL_COLUMNS = {"ip_fixed"}
FORMATS = {"csv", "jsonl"}

Progress = Callable[[int], None]
#: a validated row: (line, device id, row values without timestamps -- or, for
#: PostgreSQL, the row as one line of COPY text --, group names)
Valid = tuple[int, str, "tuple[Any, ...] | str", list[str]]
Problem = tuple[int, str]


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
    """Known keys as fields, every other key kept under ``attributes``."""
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


def _read_csv(text: io.TextIOBase) -> Iterator[tuple[int, list[str] | str, bool]]:
    """(line, cells, False) per data row, or (line, problem, True). First: the header."""
    old_limit = csv.field_size_limit()
    csv.field_size_limit(MAX_FIELD)
    try:
        reader = csv.reader(text)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield 1, f"unreadable CSV: {exc}", True
            return
        header = [h.strip().lstrip("\ufeff") for h in header]
        if "device_id" not in header:
            yield 1, "header has no device_id column", True
            return
        if len(set(header)) != len(header):
            yield 1, "header repeats a column name", True
            return
        yield 1, header, False
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield reader.line_num, f"unreadable CSV: {exc}", True
                return
            if not cells or (len(cells) == 1 and cells[0].strip() == ""):
                continue
            if len(cells) != len(header):
                yield reader.line_num, f"expected {len(header)} cells, found {len(cells)}", True
                continue
            yield reader.line_num, cells, False
    finally:
        csv.field_size_limit(old_limit)


def _read_jsonl(text: io.TextIOBase) -> Iterator[tuple[int, list[str] | str, bool]]:
    line_no = 0
    while True:
        line = text.readline(MAX_LINE + 1)
        if not line:
            return
        line_no += 1
        if len(line) > MAX_LINE and not line.endswith("\n"):
            yield line_no, f"line longer than {MAX_LINE} characters", True
            return
        if line.strip():
            yield line_no, line, False


def _csv_dict(
    plan: list[tuple[str, bool, Callable[[str], Any]]], cells: list[str]
) -> dict[str, Any]:
    # The model input directly: known columns as fields, the rest as attributes; empty
    # cells are left out (null).
    row: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for (name, known, convert), cell in zip(plan, cells, strict=True):
        value = convert(cell)
        if value is not None:
            (row if known else extra)[name] = value
    if extra:
        row["attributes"] = extra
    return row


def _json_dict(text: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg} at column {exc.colno}") from exc
    if not isinstance(obj, dict):
        raise ValueError("each line must be a JSON object")
    return _split(obj)


def _row_values(d: DeviceCreate) -> tuple[Any, ...]:
    return (
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


Validated = tuple[list[Valid], list[Problem], int]


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_field(value: Any) -> str:
    """One field in PostgreSQL's COPY text format."""
    if value is None:
        return "\\N"
    if value is True:
        return "t"
    if value is False:
        return "f"
    return str(value).translate(_COPY_ESCAPES)


def _validate_chunk(
    header: list[str] | None,
    chunk: list[tuple[int, list[str] | str]],
    copy_ts: str | None = None,
) -> Validated:
    """Validate raw records: (valid rows, problems, last line). Pure and picklable, so it
    runs inline or in a worker process alike. With ``copy_ts`` (PostgreSQL) each row is
    rendered as a line of COPY text here, off the writer's thread."""
    plan = [(h, h in KNOWN, _converter(h)) for h in header] if header is not None else None
    valid: list[Valid] = []
    problems: list[Problem] = []
    for line, raw in chunk:
        try:
            if plan is not None and isinstance(raw, list):
                item = _csv_dict(plan, raw)
            else:
                item = _json_dict(str(raw))
            dev = DeviceCreate.model_validate(item)
        except pydantic.ValidationError as exc:
            problems.append((line, "; ".join(explain(err) for err in exc.errors()[:3])))
        except ValueError as exc:
            problems.append((line, str(exc)))
        else:
            groups = list(dict.fromkeys(dev.groups or []))
            values = _row_values(dev)
            if copy_ts is not None:
                text = "\t".join(map(_copy_field, values))
                valid.append((line, dev.id, f"{text}\t{copy_ts}\t{copy_ts}\n", groups))
            else:
                valid.append((line, dev.id, values, groups))
    return valid, problems, chunk[-1][0] if chunk else 0


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

    def write(self, batch: list[Valid]) -> None:
        now = datetime.now(UTC)
        rows = [values for _, _, values, _ in batch]
        links = [
            (device_id, self._group_id(name, now))
            for _, device_id, _, groups in batch
            for name in groups
        ]
        if self.pg:
            self._copy(rows, links)
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

    def _copy(self, rows: list[Any], links: list[tuple[str, int]]) -> None:
        # COPY is PostgreSQL's bulk path: an order of magnitude above INSERT batches.
        # Rows arrive already rendered as COPY text, so this is one write per chunk.
        raw = self.conn.connection.driver_connection
        assert raw is not None
        with raw.cursor() as cur:
            with cur.copy(f"COPY devices ({', '.join(COLUMNS)}) FROM STDIN") as cp:
                cp.write("".join(rows))
            if links:
                with cur.copy("COPY device_groups (device_id, group_id) FROM STDIN") as cp:
                    cp.write("".join(f"{_copy_field(d)}\t{g}\n" for d, g in links))


def _chunks(
    records: Iterator[tuple[int, list[str] | str, bool]],
    size: int,
    problems: list[Problem],
    fmt: str,
) -> Iterator[tuple[list[str] | None, list[tuple[int, list[str] | str]]]]:
    """Group reader records into chunks; reader-level problems go straight to the list."""
    header: list[str] | None = None
    chunk: list[tuple[int, list[str] | str]] = []
    for line, raw, is_problem in records:
        if is_problem:
            problems.append((line, str(raw)))
            if len(problems) >= MAX_PROBLEMS:
                break
            continue
        if fmt == "csv" and header is None and isinstance(raw, list):
            header = raw
            continue
        chunk.append((line, raw))
        if len(chunk) >= size:
            yield header, chunk
            chunk = []
    if chunk:
        yield header, chunk


def _workers(size_hint: int | None) -> int:
    # Worker processes cost ~0.5 s to start: only for inputs known to be large.
    if size_hint is None or size_hint < PARALLEL_BYTES:
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(cpus or 1, 4) if (cpus or 1) > 1 else 0


def import_stream(
    registry: Registry,
    stream: BinaryIO,
    *,
    fmt: str,
    actor: Actor,
    batch_size: int = 5000,
    progress: Progress | None = None,
    source: str = "upload",
    size_hint: int | None = None,
    workers: int | None = None,
) -> ImportResult:
    if fmt not in FORMATS:
        raise ValidationError(f"unknown import format {fmt!r} (use csv or jsonl)")
    raw = io.BufferedReader(_CountingReader(stream, progress), buffer_size=1 << 20)
    text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="strict", newline="")
    records = _read_csv(text) if fmt == "csv" else _read_jsonl(text)
    problems: list[Problem] = []
    chunks = _chunks(records, batch_size, problems, fmt)
    n_workers = _workers(size_hint) if workers is None else workers

    seen: set[str] = set()
    devices = 0
    last_line = 0
    with registry.engine.begin() as conn:
        writer = _Writer(conn)
        pool = multiprocessing.get_context("spawn").Pool(n_workers) if n_workers > 1 else None
        try:
            copy_ts = _copy_field(datetime.now(UTC).isoformat()) if writer.pg else None
            tasks = ((h, c, copy_ts) for h, c in chunks)
            results: Iterable[Validated]
            if pool is not None:
                results = _ordered(pool, tasks, window=2 * n_workers)
            else:
                results = (_validate_chunk(*t) for t in tasks)
            for valid, bad, last in results:
                last_line = max(last_line, last)
                problems.extend(bad)
                batch: list[Valid] = []
                for v in valid:
                    if v[1] in seen:
                        problems.append((v[0], f"duplicate device_id {v[1]!r} in file"))
                    else:
                        seen.add(v[1])
                        batch.append(v)
                if batch:
                    clash = writer.existing([v[1] for v in batch])
                    problems.extend(
                        (v[0], f"device {v[1]!r} already exists") for v in batch if v[1] in clash
                    )
                if len(problems) >= MAX_PROBLEMS:
                    break
                if batch and not problems:
                    try:
                        writer.write(batch)
                    except (IntegrityError, psycopg.IntegrityError) as exc:
                        # another writer inserted one of these ids since the check
                        raise ConflictError(
                            f"import conflicts with a concurrent change: {exc}"
                        ) from exc
                    devices += len(batch)
        except UnicodeDecodeError as exc:
            problems.append((last_line + 1, f"not UTF-8 text: {exc.reason}"))
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
        # Raising inside ``engine.begin()`` rolls the whole import back.
        if problems:
            problems.sort()
            raise ImportRejectedError(
                problems[:MAX_PROBLEMS], truncated=len(problems) >= MAX_PROBLEMS
            )
        if devices == 0:
            raise ValidationError("import file holds no devices")
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


def _ordered(pool: Any, args: Iterator[tuple[Any, ...]], window: int) -> Iterator[Validated]:
    """Results of ``_validate_chunk`` over ``args`` in order, with at most ``window``
    chunks in flight: the reader never runs ahead of the writer by more than that, so
    memory stays flat (``Pool.imap`` would read the whole input ahead)."""
    pending: deque[Any] = deque()
    for a in args:
        pending.append(pool.apply_async(_validate_chunk, a))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def detect_format(name: str) -> str:
    low = name.lower()
    if low.endswith(".csv"):
        return "csv"
    if low.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    raise ValidationError(f"cannot tell the format of {name!r}: use .csv or .jsonl, or --format")
