"""Retention: archive a range of the log to one self-verifying JSON file.

An archive of entries ``[start, end)`` holds the leaves themselves, a signed checkpoint of
size ``n >= end``, and the hashes of the complete subtrees left of ``start``
(``subtrees(0, start)``) and right of ``end`` (``subtrees(end, n)``). Together with the
leaves they cover ``[0, n)``, so a verifier recomputes the checkpoint's root from the
file alone and checks the signature with the log's pinned public key: no database, no
other entries needed. Layout (``format: fleetwarden-auditlog-archive/v1``)::

    {"format", "origin", "start", "end", "checkpoint": "<signed note>",
     "verifier_keys": ["name+id+key", ...],          # informative: pin your own copy
     "left":  [[level, index, "<hex>"], ...],
     "right": [[level, index, "<hex>"], ...],
     "entries": [{"seq": n, "leaf": "<base64 of the exact leaf bytes>"}, ...]}

:func:`verify_archive` is deliberately written with the standard library, ``merkle`` and
``note`` only, and the same logic is in the standalone verifier (docs/auditlog.md).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetwarden._internal.files import atomic_write
from fleetwarden.auditlog import merkle
from fleetwarden.auditlog.errors import ArchiveError, CheckpointError, EntryNotFoundError
from fleetwarden.auditlog.note import Verifier, verify_note
from fleetwarden.auditlog.store import AuditStore

FORMAT = "fleetwarden-auditlog-archive/v1"
MAX_ARCHIVE_BYTES = 4 << 30


def build_archive(
    store: AuditStore, start: int, end: int, *, origin: str, verifier_keys: Sequence[str]
) -> dict[str, Any]:
    if not 0 <= start < end:
        raise EntryNotFoundError(f"empty or invalid range {start}..{end}")
    cp = store.covering_checkpoint(end - 1)
    if cp is None:
        raise CheckpointError(f"entries up to {end - 1} are not covered by a checkpoint yet")
    rows = store.entries(start, end)
    if len(rows) != end - start or any(r.seq != start + i for i, r in enumerate(rows)):
        raise ArchiveError(f"entries {start}..{end - 1} are not all present; verify the log")
    left = merkle.subtrees(0, start)
    right = merkle.subtrees(end, cp.size)
    got = store.subtree_hashes(left + right)
    return {
        "format": FORMAT,
        "origin": origin,
        "start": start,
        "end": end,
        "checkpoint": cp.note,
        "verifier_keys": list(verifier_keys),
        "left": [[lv, ix, got[(lv, ix)].hex()] for lv, ix in left],
        "right": [[lv, ix, got[(lv, ix)].hex()] for lv, ix in right],
        "entries": [{"seq": r.seq, "leaf": base64.b64encode(r.leaf).decode()} for r in rows],
    }


def write_archive(path: Path, archive: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(archive, separators=(",", ":")).encode(), mode=0o600)


@dataclass(frozen=True)
class ArchiveReport:
    origin: str
    start: int
    end: int
    checkpoint_size: int
    root_hash: str


def _root_from_cover(cover: dict[tuple[int, int], bytes], size: int) -> bytes:
    def get(level: int, idx: int) -> bytes:
        h = cover.get((level, idx))
        if h is not None:
            return h
        if level == 0:
            raise ArchiveError(f"archive does not cover leaf {idx}")
        h = merkle.node_hash(get(level - 1, 2 * idx), get(level - 1, 2 * idx + 1))
        cover[(level, idx)] = h
        return h

    return merkle.fold([get(lv, ix) for lv, ix in merkle.subtrees(0, size)])


def verify_archive(
    path_or_obj: Path | dict[str, Any],
    verifiers: Sequence[Verifier],
    *,
    origin: str | None = None,
) -> ArchiveReport:
    """Check an archive on its own; raise ArchiveError/CheckpointError precisely."""
    if isinstance(path_or_obj, Path):
        if path_or_obj.stat().st_size > MAX_ARCHIVE_BYTES:
            raise ArchiveError("archive file is too large")
        try:
            obj = json.loads(path_or_obj.read_bytes())
        except ValueError as exc:
            raise ArchiveError(f"{path_or_obj} is not JSON: {exc}") from exc
    else:
        obj = path_or_obj
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ArchiveError(f"not a {FORMAT} file")
    v = verify_note(str(obj.get("checkpoint", "")), verifiers, origin=origin)
    cp = v.checkpoint
    try:
        start, end = int(obj["start"]), int(obj["end"])
        cover: dict[tuple[int, int], bytes] = {}
        for part in ("left", "right"):
            for lv, ix, hx in obj[part]:
                cover[(int(lv), int(ix))] = bytes.fromhex(hx)
        entries = obj["entries"]
        if not 0 <= start < end <= cp.size or len(entries) != end - start:
            raise ArchiveError("archive range does not match its entries or checkpoint")
        want_left = merkle.subtrees(0, start)
        want_right = merkle.subtrees(end, cp.size)
        if sorted(k for k in cover) != sorted(want_left + want_right):
            raise ArchiveError("archive's boundary hashes do not match its range")
        for i, e in enumerate(entries):
            seq = int(e["seq"])
            leaf = base64.b64decode(e["leaf"], validate=True)
            if seq != start + i:
                raise ArchiveError(f"archive entry {i} has seq {seq}, expected {start + i}")
            if not leaf.endswith(b',"seq":%d,"v":1}' % seq):
                raise ArchiveError(f"archive entry {seq}: leaf does not carry its own seq")
            cover[(0, seq)] = merkle.leaf_hash(leaf)
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise ArchiveError(f"malformed archive: {exc!r}") from exc
    root = _root_from_cover(cover, cp.size)
    if root != cp.root:
        raise ArchiveError(
            f"archive entries {start}..{end - 1} do not hash to checkpoint {cp.size}'s root"
        )
    return ArchiveReport(cp.origin, start, end, cp.size, cp.root.hex())
