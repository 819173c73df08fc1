"""Inventory rows (``inventory.csv`` / ``inventory.jsonl``) as :class:`Device` records.

The columns and the per-row validation are the registry import's
(:mod:`fleetwarden.registry.importer`, :class:`~fleetwarden.registry.schemas.DeviceCreate`),
so a bundle that imports cleanly assesses cleanly. The assessment adds optional columns
(``password_hash``, ``open_ports``, ``debug_ports_enabled``, ``secure_boot``,
``last_seen``, ``status``) which the importer would keep as attributes.

Invariants: a bad row never stops the file (it is listed as a problem, up to
``MAX_PROBLEMS``, and counted); duplicate device ids keep the first row; a file that is
not UTF-8 is refused as a whole.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydantic

from fleetwarden.assess.errors import EvidenceError
from fleetwarden.assess.evidence import _io
from fleetwarden.assess.evidence.types import Device
from fleetwarden.registry import importer, schemas
from fleetwarden.registry.schemas import ApnKind, DeviceCreate, KeyStorage, RiskClass

MAX_PROBLEMS = 100
EXTRA = ("password_hash", "open_ports", "debug_ports_enabled", "secure_boot", "last_seen")


def _bool(v: Any) -> bool | None:
    if v is None or isinstance(v, bool):
        return v
    low = str(v).strip().lower()
    if low in {"true", "1", "yes"}:
        return True
    if low in {"false", "0", "no"}:
        return False
    raise ValueError(f"expected true or false, got {str(v)[:40]!r}")


def _ports(v: Any) -> tuple[int, ...] | None:
    if v is None:
        return None
    items = v if isinstance(v, list) else str(v).replace(",", ";").split(";")
    out = []
    for item in items[:1024]:
        s = str(item).strip()
        if not s:
            continue
        port = int(s)
        if not 0 < port < 65536:
            raise ValueError(f"port out of range: {port}")
        out.append(port)
    return tuple(out)


def _when(v: Any) -> datetime | None:
    if v is None or v == "":
        return None
    ts = datetime.fromisoformat(str(v)[:64])
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def to_device(row: dict[str, Any]) -> Device:
    """Validate one row like the registry import does and keep what checks need."""
    extra = {k: row.pop(k) for k in (*EXTRA, "status") if k in row}
    d = DeviceCreate.model_validate(importer._split(row))
    hash_ = extra.get("password_hash")
    status = str(extra.get("status") or "active").strip().lower()[:16]
    return Device(
        id=d.id,
        model=d.model,
        risk_class=d.risk_class.value if d.risk_class else "medium",
        sector=d.sector,
        firmware_version=d.firmware_version,
        key_storage=d.key_storage.value if d.key_storage else "unknown",
        apn=d.apn.value if d.apn else None,
        ip=d.ip,
        ip_fixed=d.ip_fixed,
        allowed_cidrs=tuple(d.allowed_cidrs or ()),
        vlan=d.vlan,
        groups=tuple(d.groups or ()),
        status=status,
        password_hash=str(hash_)[:512] if hash_ not in (None, "") else None,
        open_ports=_ports(extra.get("open_ports")),
        debug_ports_enabled=_bool(extra.get("debug_ports_enabled")),
        secure_boot=_bool(extra.get("secure_boot")),
        last_seen=_when(extra.get("last_seen")),
    )


_SECTOR = re.compile(r"^[a-z0-9_-]+$")
_RISK = frozenset(r.value for r in RiskClass)
_STORAGE = frozenset(k.value for k in KeyStorage)
_APN = frozenset(a.value for a in ApnKind)


_COLS = (
    "device_id", "model", "hardware_revision", "risk_class", "sector", "firmware_version",
    "key_storage", "apn", "ip", "ip_fixed", "allowed_cidrs", "vlan", "groups", "status",
    "password_hash", "open_ports", "debug_ports_enabled", "secure_boot", "last_seen",
)  # fmt: skip


def plan_columns(header: list[str]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Index of each of ``_COLS`` in the header (-1 when absent) and the extra columns."""
    idx = {h: i for i, h in enumerate(header)}
    extra = tuple(i for h, i in idx.items() if h not in _COLS)
    return tuple(idx.get(c, -1) for c in _COLS), extra


def fast_device(cells: list[str], cols: tuple[int, ...], extra: tuple[int, ...]) -> Device:
    """The registry import's validation for one CSV row, without building a pydantic model.

    Same rules as :class:`DeviceCreate` (the schema's own validators for ids, addresses,
    CIDRs and names; its enumerations and length limits); ``tests/unit/assess`` checks
    the two agree. Any doubt raises ValueError and the caller re-validates the row with
    the pydantic model for the exact message.
    """
    v = [cells[i].strip() if i >= 0 else "" for i in cols]
    (did, model, hwrev, risk, sector, fwv, storage, apn, ip, fixed, cidrs_raw, vlan_raw,
     groups_raw, status, hash_, ports, debug, sboot, seen) = v  # fmt: skip
    if not schemas.ID_RE.fullmatch(did):
        raise ValueError("device_id")
    if len(model) > 128 or len(hwrev) > 64 or len(fwv) > 64:
        raise ValueError("length")
    if sector:
        sector = sector.lower()
        if len(sector) > 64 or not _SECTOR.match(sector):
            raise ValueError("sector")
    risk = risk or "medium"
    storage = storage or "unknown"
    if risk not in _RISK or storage not in _STORAGE or (apn and apn not in _APN):
        raise ValueError("enumeration")
    cidrs = [p.strip() for p in cidrs_raw.split(";") if p.strip()] if cidrs_raw else []
    groups = [p.strip() for p in groups_raw.split(";") if p.strip()] if groups_raw else []
    if len(cidrs) > 256 or len(groups) > 64:
        raise ValueError("list too long")
    vlan = int(vlan_raw) if vlan_raw else None
    if vlan is not None and not 1 <= vlan <= 4094:
        raise ValueError("vlan")
    if extra and sum(1 for i in extra if cells[i].strip()) > 64:
        raise ValueError("attributes")
    return Device(
        id=did,
        model=model or None,
        risk_class=risk,
        sector=sector or None,
        firmware_version=fwv or None,
        key_storage=storage,
        apn=apn or None,
        ip=schemas._ip(ip) if ip else None,
        ip_fixed=_bool(fixed) if fixed else None,
        allowed_cidrs=tuple(schemas._cidr(c) for c in cidrs),
        vlan=vlan,
        groups=tuple(_name(g) for g in groups),
        status=status.lower()[:16] if status else "active",
        password_hash=hash_[:512] if hash_ else None,
        open_ports=_ports(ports) if ports else None,
        debug_ports_enabled=_bool(debug) if debug else None,
        secure_boot=_bool(sboot) if sboot else None,
        last_seen=_when(seen) if seen else None,
    )


def _name(v: str) -> str:
    if not schemas.NAME_RE.fullmatch(v):
        raise ValueError("name")
    return v


def cell_value(column: str, value: str) -> Any:
    """A CSV cell as the registry import reads it: lists split on ``;``, booleans, null."""
    value = value.strip()
    if value == "":
        return None
    if column in importer.LIST_COLUMNS:
        return [p.strip() for p in value.split(";") if p.strip()] or None
    if column in importer.BOOL_COLUMNS:
        return _bool(value)
    return value


def _rows_jsonl(text: io.TextIOBase) -> Iterator[tuple[int, dict[str, Any] | str | Device]]:
    line_no = 0
    while True:
        line = text.readline(importer.MAX_LINE + 1)
        if not line:
            return
        line_no += 1
        if len(line) > importer.MAX_LINE and not line.endswith("\n"):
            yield line_no, f"line longer than {importer.MAX_LINE} characters"
            return
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield line_no, f"invalid JSON: {exc.msg} at column {exc.colno}"
            continue
        except RecursionError:
            yield line_no, "invalid JSON: nested too deeply"
            continue
        if not isinstance(obj, dict):
            yield line_no, "each line must be a JSON object"
            continue
        yield line_no, obj


def _describe(exc: Exception) -> str:
    if isinstance(exc, pydantic.ValidationError):
        return "; ".join(schemas.explain(e) for e in exc.errors()[:3])
    return str(exc)[:200]


def _rows_csv_fast(text: io.TextIOBase) -> Iterator[tuple[int, dict[str, Any] | str | Device]]:
    """Read CSV like the registry import, validating straight into :class:`Device`.

    A row the fast path refuses is handed on as the importer's dict, so the pydantic
    model produces the exact error message (and the same verdict).
    """
    old_limit = csv.field_size_limit()
    csv.field_size_limit(importer.MAX_FIELD)
    try:
        reader = csv.reader(text)
        try:
            header = [h.strip().lstrip("\ufeff") for h in next(reader)]
        except StopIteration:
            return
        except csv.Error as exc:
            yield 1, f"unreadable CSV header: {exc}"
            return
        if "device_id" not in header:
            yield 1, "header has no device_id column"
            return
        if len(set(header)) != len(header):
            yield 1, "header repeats a column name"
            return
        cols, extra = plan_columns(header)
        width = len(header)
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
            if len(cells) != width:
                yield line, f"expected {width} cells, found {len(cells)}"
                continue
            try:
                yield line, fast_device(cells, cols, extra)
            except (ValueError, TypeError):
                try:
                    yield (
                        line,
                        {h: cell_value(h, c) for h, c in zip(header, cells, strict=True)},
                    )
                except ValueError as exc:
                    yield line, str(exc)
    finally:
        csv.field_size_limit(old_limit)


def parse(
    path: Path,
    root: Path,
    devices: dict[str, Device],
    problems: list[str],
    progress: Callable[[int], None] | None = None,
) -> int:
    """Add the file's devices to ``devices``; return the number of bad rows."""
    fmt = "csv" if path.suffix.lower() == ".csv" else "jsonl"
    fd, _ = _io.open_checked(path, _io.LIMITS["inventory"])
    name = _io.rel(root, path)
    bad = 0
    # rows land in ``found`` and join ``devices`` only when the whole file was read:
    # a file refused half-way (bad encoding) contributes nothing
    found: dict[str, Device] = {}
    with os.fdopen(fd, "rb", buffering=1 << 20) as raw:
        head = raw.peek(4)[:4] if hasattr(raw, "peek") else b""
        encoding = "utf-16" if head.startswith((b"\xff\xfe", b"\xfe\xff")) else "utf-8-sig"
        text = io.TextIOWrapper(raw, encoding=encoding, errors="strict", newline="")
        rows: Iterator[tuple[int, dict[str, Any] | str | Device]] = (
            _rows_csv_fast(text) if fmt == "csv" else _rows_jsonl(text)
        )
        line = 0
        try:
            for line, item in rows:
                if progress is not None and line % 10000 == 0:
                    progress(line)
                if isinstance(item, str):
                    bad += 1
                    if len(problems) < MAX_PROBLEMS:
                        problems.append(f"{name} line {line}: {item}")
                    continue
                try:
                    dev = item if isinstance(item, Device) else to_device(item)
                except (pydantic.ValidationError, ValueError, TypeError) as exc:
                    bad += 1
                    if len(problems) < MAX_PROBLEMS:
                        problems.append(f"{name} line {line}: {_describe(exc)}")
                    continue
                if dev.id in devices or dev.id in found:
                    bad += 1
                    if len(problems) < MAX_PROBLEMS:
                        problems.append(f"{name} line {line}: duplicate device_id {dev.id!r}")
                    continue
                found[dev.id] = dev
        except UnicodeError as exc:
            label = "UTF-16" if encoding == "utf-16" else "UTF-8"
            raise EvidenceError(f"not {label} text after line {line}: {exc}") from exc
    devices.update(found)
    return bad
