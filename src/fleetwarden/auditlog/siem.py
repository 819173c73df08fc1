"""SIEM export: OCSF JSON lines (canonical), ECS JSON, CEF, RFC 5424 syslog (TCP/TLS/UDP).

Every exported record carries the log proof material a SIEM user needs to check it
later: its sequence number, its leaf hash (hex) and the checkpoint that covers it (tree
size and root hash, whose signed note is in the log's anchors). Only entries covered by
a checkpoint are exported, so that reference always exists.

Framing: syslog over TCP and TLS uses octet counting (RFC 6587 3.4.1 / RFC 5425 4.3:
``<length> <message>``), which survives newlines inside messages; UDP sends one message
per datagram (RFC 5426). CEF escapes per the ArcSight CEF spec (``|`` and ``\\`` in the
header, ``=``, ``\\`` and newlines in extensions).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleetwarden import __version__
from fleetwarden.auditlog.errors import AuditLogError
from fleetwarden.auditlog.store import AuditStore, Entry, StoredCheckpoint, canonical_json

FORMATS = ("ocsf", "ecs", "cef", "syslog")
MAX_SYSLOG_BYTES = 64 * 1024


class ExportError(AuditLogError):
    exit_code = 69
    http_status = 502


@dataclass(frozen=True)
class ExportRecord:
    seq: int
    leaf_hash: str
    checkpoint_size: int
    checkpoint_root: str
    record: dict[str, Any]

    @property
    def proof(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "leaf_hash": self.leaf_hash,
            "checkpoint": {"size": self.checkpoint_size, "root_hash": self.checkpoint_root},
        }

    @property
    def event(self) -> dict[str, Any]:
        ev = self.record.get("event")
        if isinstance(ev, dict):
            return ev
        # a malformed input is exported as a finding-like record of its own
        bad = self.record.get("malformed", {})
        return {
            "class_uid": 0,
            "message": f"malformed event recorded: {bad.get('reason', '?')}",
            "severity_id": 3,
            "time": self.record.get("logged_at", 0),
            "metadata": {"uid": f"malformed:{bad.get('sha256', '')}"},
            "unmapped": {"malformed": bad},
        }


def records(store: AuditStore, start: int = 0, end: int | None = None) -> Iterator[ExportRecord]:
    cps = store.checkpoints()
    if not cps:
        return
    stop = cps[-1].size if end is None else min(end, cps[-1].size)
    ci = 0
    for e in _entries(store, start, stop):
        while cps[ci].size <= e.seq:
            ci += 1
        cp: StoredCheckpoint = cps[ci]
        try:
            rec = e.record()
        except ValueError:
            rec = {"kind": "damaged", "logged_at": e.logged_at}
        yield ExportRecord(e.seq, e.leaf_hash.hex(), cp.size, cp.root.hex(), rec)


def _entries(store: AuditStore, start: int, stop: int) -> Iterator[Entry]:
    pos = start
    while pos < stop:
        chunk = store.entries(pos, min(stop, pos + 5000))
        if not chunk:
            return
        yield from chunk
        pos = chunk[-1].seq + 1


def to_ocsf(r: ExportRecord) -> str:
    ev = dict(r.event)
    unmapped = dict(ev.get("unmapped") or {})
    unmapped["fleetwarden_auditlog"] = r.proof
    ev["unmapped"] = unmapped
    return canonical_json(ev).decode()


_ECS_OUTCOME = {0: "unknown", 1: "success", 2: "failure"}


def to_ecs(r: ExportRecord) -> str:
    ev = r.event
    ts = datetime.fromtimestamp(int(ev.get("time", 0)) / 1000, UTC)
    doc: dict[str, Any] = {
        "@timestamp": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "ecs": {"version": "8.11.0"},
        "message": ev.get("message", ""),
        "event": {
            "id": ev.get("metadata", {}).get("uid"),
            "kind": "alert" if ev.get("class_uid") in (2003, 2004) else "event",
            "code": str(ev.get("type_uid", ev.get("class_uid", 0))),
            "action": ev.get("api", {}).get("operation") or ev.get("class_name", "unknown"),
            "outcome": _ECS_OUTCOME.get(int(ev.get("status_id", 0)), "unknown"),
            "severity": int(ev.get("severity_id", 0)),
            "sequence": r.seq,
            "hash": r.leaf_hash,
            "provider": "fleetwarden",
            "dataset": "fleetwarden.audit",
        },
        "observer": {"vendor": "fleetwarden", "product": "fleetwarden", "version": __version__},
        "labels": {
            "audit_seq": str(r.seq),
            "audit_leaf_hash": r.leaf_hash,
            "audit_checkpoint_size": str(r.checkpoint_size),
            "audit_checkpoint_root": r.checkpoint_root,
        },
    }
    if "actor" in ev:
        doc["user"] = {"name": ev["actor"].get("user", {}).get("name")}
    if "device" in ev:
        doc["host"] = {"id": ev["device"].get("uid")}
    if "src_endpoint" in ev:
        doc["source"] = {"ip": ev["src_endpoint"].get("ip")}
    return canonical_json(doc).decode()


def _cef_header(v: Any) -> str:
    return str(v).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def _cef_ext(v: Any) -> str:
    return (
        str(v)
        .replace("\\", "\\\\")
        .replace("=", "\\=")
        .replace("\r\n", "\\n")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
    )


def to_cef(r: ExportRecord) -> str:
    ev = r.event
    sev = min(10, int(ev.get("severity_id", 0)) * 2)
    ext: dict[str, Any] = {
        "rt": int(ev.get("time", 0)),
        "externalId": ev.get("metadata", {}).get("uid", ""),
        "outcome": _ECS_OUTCOME.get(int(ev.get("status_id", 0)), "unknown"),
        "cs1Label": "auditLeafHash",
        "cs1": r.leaf_hash,
        "cs2Label": "auditCheckpointRoot",
        "cs2": r.checkpoint_root,
        "cn1Label": "auditSeq",
        "cn1": r.seq,
        "cn2Label": "auditCheckpointSize",
        "cn2": r.checkpoint_size,
        "msg": ev.get("message", ""),
    }
    if "actor" in ev:
        ext["suser"] = ev["actor"].get("user", {}).get("name", "")
    if "src_endpoint" in ev:
        ext["src"] = ev["src_endpoint"].get("ip", "")
    if "device" in ev:
        ext["deviceExternalId"] = ev["device"].get("uid", "")
    header = "|".join(
        _cef_header(x)
        for x in (
            "CEF:0",
            "fleetwarden",
            "fleetwarden",
            __version__,
            ev.get("type_uid", ev.get("class_uid", 0)),
            ev.get("class_name", "malformed event"),
            sev,
        )
    )
    return header + "|" + " ".join(f"{k}={_cef_ext(v)}" for k, v in ext.items())


def _sd_escape(v: Any) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def syslog_message(
    msg: str,
    *,
    severity: int = 6,
    facility: int = 13,  # log audit
    timestamp_ms: int,
    hostname: str,
    msgid: str = "audit",
    sd: dict[str, dict[str, Any]] | None = None,
) -> str:
    """One RFC 5424 message (without transport framing)."""
    pri = facility * 8 + severity
    ts = datetime.fromtimestamp(timestamp_ms / 1000, UTC).isoformat(timespec="milliseconds")
    ts = ts.replace("+00:00", "Z")
    sdata = (
        "".join(
            f"[{sid} " + " ".join(f'{k}="{_sd_escape(v)}"' for k, v in params.items()) + "]"
            for sid, params in (sd or {}).items()
        )
        or "-"
    )
    host = (hostname or "-")[:255].replace(" ", "_")
    return f"<{pri}>1 {ts} {host} fleetwarden - {msgid} {sdata} {msg}"


#: OCSF severity_id -> syslog severity
_SYSLOG_SEV = {0: 6, 1: 6, 2: 5, 3: 4, 4: 3, 5: 2, 6: 0}


def to_syslog(r: ExportRecord, hostname: str | None = None) -> str:
    ev = r.event
    # 32473 is the documentation enterprise number of RFC 5612 (example SD-IDs)
    return syslog_message(
        to_ocsf(r),
        severity=_SYSLOG_SEV.get(int(ev.get("severity_id", 0)), 6),
        timestamp_ms=int(ev.get("time", 0)),
        hostname=hostname or socket.gethostname(),
        sd={
            "fwaudit@32473": {
                "seq": r.seq,
                "leafHash": r.leaf_hash,
                "cpSize": r.checkpoint_size,
                "cpRoot": r.checkpoint_root,
            }
        },
    )


def render(fmt: str, r: ExportRecord) -> str:
    if fmt == "ocsf":
        return to_ocsf(r)
    if fmt == "ecs":
        return to_ecs(r)
    if fmt == "cef":
        return to_cef(r)
    if fmt == "syslog":
        return to_syslog(r)
    raise ExportError(f"unknown export format {fmt!r} (one of {', '.join(FORMATS)})")


class SyslogSender:
    """Send RFC 5424 messages to ``tcp://``, ``tls://`` or ``udp://host:port``."""

    def __init__(self, url: str, *, ca_file: Path | None = None, timeout: float = 10.0) -> None:
        scheme, _, rest = url.partition("://")
        host, _, port_s = rest.rpartition(":")
        if scheme not in ("tcp", "tls", "udp") or not host or not port_s.isdigit():
            raise ExportError(f"syslog destination must be tcp|tls|udp://host:port, not {url!r}")
        self.scheme, self.host, self.port = scheme, host.strip("[]"), int(port_s)
        self.ca_file, self.timeout = ca_file, timeout
        self._sock: socket.socket | None = None

    def __enter__(self) -> SyslogSender:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        try:
            if self.scheme == "udp":
                self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self._sock.connect((self.host, self.port))
                return
            raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
            if self.scheme == "tls":
                ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
                self._sock = ctx.wrap_socket(raw, server_hostname=self.host)
            else:
                self._sock = raw
        except (OSError, ssl.SSLError) as exc:
            raise ExportError(
                f"cannot connect to syslog {self.scheme}://{self.host}:{self.port}: {exc}"
            ) from exc

    def send(self, message: str) -> None:
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        data = message.encode()
        if len(data) > MAX_SYSLOG_BYTES:
            raise ExportError(f"syslog message of {len(data)} bytes exceeds {MAX_SYSLOG_BYTES}")
        try:
            if self.scheme == "udp":
                self._sock.send(data)
            else:
                self._sock.sendall(b"%d " % len(data) + data)
        except (OSError, ssl.SSLError) as exc:
            raise ExportError(f"syslog send failed: {exc}") from exc

    def close(self) -> None:
        """Close gracefully: a TLS close_notify (or a TCP half-close) and wait for the
        collector to finish reading; rsyslog drops a session's unread tail when the
        peer just vanishes, so an abrupt close can lose the last messages."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            sock.settimeout(5)
            if isinstance(sock, ssl.SSLSocket):
                sock = sock.unwrap()
            if self.scheme != "udp":
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(4096):
                    pass
        except (OSError, ssl.SSLError):
            pass  # best effort: everything was already handed to the kernel
        finally:
            sock.close()


def export(store: AuditStore, fmt: str, *, start: int = 0, end: int | None = None) -> Iterable[str]:
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r} (one of {', '.join(FORMATS)})")
    for r in records(store, start, end):
        yield render(fmt, r)
