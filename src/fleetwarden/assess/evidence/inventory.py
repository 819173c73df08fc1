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

import io
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydantic

from fleetwarden.assess.errors import EvidenceError
from fleetwarden.assess.evidence import _io
from fleetwarden.assess.evidence.types import Device
from fleetwarden.registry import importer
from fleetwarden.registry.schemas import DeviceCreate

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


def _describe(exc: Exception) -> str:
    if isinstance(exc, pydantic.ValidationError):
        return importer._describe(exc)
    return str(exc)[:200]


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
        rows: Iterator[tuple[int, dict[str, Any] | str]] = (
            importer._rows_csv(text) if fmt == "csv" else importer._rows_jsonl(text)
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
                    dev = to_device(item)
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
