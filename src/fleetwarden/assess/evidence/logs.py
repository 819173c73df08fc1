"""Mosquitto logs (``logs/``): connections per client id, source addresses, takeovers.

Only the connection messages are read (``New client connected from IP:PORT as ID
(... u'USER')`` and ``Client ID already connected, closing old connection``); any other
line is counted and skipped. Memory is bounded: at most ``MAX_IPS`` addresses are kept
per client id.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

from fleetwarden.assess.errors import EvidenceError
from fleetwarden.assess.evidence import _io
from fleetwarden.assess.evidence.types import LogSummary

MAX_IPS = 8
MAX_LINE = 64 * 1024
_CONNECTED = re.compile(
    r"New client connected from (\[[0-9a-fA-F:.]+\]|[0-9a-fA-F:.]+?):(\d+) as (\S+)"
    r"(?: \(.*?(?:u'([^']*)')?[^()]*\))?"
)
_TAKEOVER = re.compile(r"Client (\S+) already connected, closing old connection")


def parse_lines(lines: io.TextIOBase | list[str], path: str) -> LogSummary:
    s = LogSummary(path=path)
    for line in lines:
        s.lines += 1
        if len(line) > MAX_LINE:
            continue
        m = _CONNECTED.search(line)
        if m:
            ip, cid, user = m.group(1).strip("[]"), m.group(3).rstrip("."), m.group(4)
            s.connections += 1
            ips = s.client_ips.setdefault(cid, set())
            if len(ips) < MAX_IPS:
                ips.add(ip)
            if user:
                s.client_users.setdefault(cid, set()).add(user)
            elif "u'" not in line:
                s.anonymous_connections += 1
            continue
        t = _TAKEOVER.search(line)
        if t:
            s.takeovers[t.group(1)] = s.takeovers.get(t.group(1), 0) + 1
    return s


def read(path: Path, root: Path) -> LogSummary:
    fd, _ = _io.open_checked(path, _io.LIMITS["log"])
    with os.fdopen(fd, "rb") as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", newline=None)
        try:
            return parse_lines(text, _io.rel(root, path))
        except UnicodeDecodeError as exc:
            raise EvidenceError(f"not UTF-8 text: {exc.reason}") from exc
