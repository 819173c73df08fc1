"""/v1/auditlog: read the tamper-evident audit log (control C7), its proofs and checkpoints.

Reading needs any role (auditors included); making a checkpoint or running a full
verification needs admin. Nothing here appends: entries only come from the event bus.
"""

from __future__ import annotations

import threading
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool

from fleetwarden.api.auth import ADMIN, READ, require
from fleetwarden.auditlog.errors import CheckpointError, EntryNotFoundError
from fleetwarden.auditlog.service import AuditLog, open_log
from fleetwarden.auditlog.store import Entry
from fleetwarden.registry import Principal

router = APIRouter(prefix="/v1/auditlog", tags=["auditlog"])
Reader = Annotated[Principal, Depends(require(READ))]
Admin = Annotated[Principal, Depends(require(ADMIN))]
_lock = threading.Lock()


def _log(request: Request) -> AuditLog:
    state = request.app.state
    with _lock:
        log = getattr(state, "auditlog", None)
        if log is None:  # the app runs without the component (tests, API-only)
            s = state.settings
            log = open_log(s.auditlog, s.data_dir)
            state.auditlog = log
    return log


def _entry(e: Entry) -> dict[str, Any]:
    try:
        record: Any = e.record()
    except ValueError:
        record = None
    return {
        "seq": e.seq,
        "uid": e.uid,
        "logged_at": e.logged_at,
        "leaf_hash": e.leaf_hash.hex(),
        "record": record,
    }


@router.get("")
def head(request: Request, _: Reader) -> dict[str, Any]:
    """Size, root, newest checkpoint and the key that verifies it."""
    log = _log(request)
    size, root = log.store.head()
    cp = log.store.latest_checkpoint()
    return {
        "origin": log.origin,
        "size": size,
        "root_hash": root.hex(),
        "checkpoint": cp.note if cp else None,
        "verifier_keys": [v.text() for v in log.verifiers()],
        "witness_keys": [v.text() for v in log.witness_verifiers()],
    }


@router.get("/entries")
def entries(
    request: Request,
    _: Reader,
    start: Annotated[int | None, Query(ge=0)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Entries from ``start`` (default: the newest ``limit``)."""
    store = _log(request).store
    got = store.tail(limit) if start is None else store.entries(start, start + limit)
    return [_entry(e) for e in got]


@router.get("/entries/{seq}")
def entry(request: Request, seq: int, _: Reader) -> dict[str, Any]:
    e = _log(request).store.entry(seq)
    if e is None:
        raise EntryNotFoundError(f"no audit log entry {seq}")
    return _entry(e)


@router.get("/proof/inclusion")
def inclusion(
    request: Request,
    _: Reader,
    seq: Annotated[int, Query(ge=0)],
    size: Annotated[int | None, Query(ge=1)] = None,
) -> dict[str, Any]:
    return _log(request).prove(seq, size)


@router.get("/proof/consistency")
def consistency(
    request: Request,
    _: Reader,
    old: Annotated[int, Query(ge=0)],
    new: Annotated[int | None, Query(ge=0)] = None,
) -> dict[str, Any]:
    return _log(request).consistency(old, new)


@router.get("/checkpoint", response_class=PlainTextResponse)
def checkpoint(request: Request, _: Reader) -> str:
    """The newest signed checkpoint, as a C2SP signed note (text/plain)."""
    cp = _log(request).store.latest_checkpoint()
    if cp is None:
        raise CheckpointError("the audit log has no checkpoint yet")
    return cp.note


@router.post("/checkpoint", response_class=PlainTextResponse)
async def make_checkpoint(request: Request, _: Admin) -> str:
    log = _log(request)
    cp = await run_in_threadpool(log.checkpointer.make)
    if cp is None:
        raise CheckpointError("the audit log is empty")
    return cp.note


@router.post("/verify")
async def verify(request: Request, _: Admin) -> dict[str, Any]:
    """Recompute the whole tree; report the first damaged index and its kind."""
    log = _log(request)
    rep = await run_in_threadpool(log.verify)
    return rep.as_dict()
