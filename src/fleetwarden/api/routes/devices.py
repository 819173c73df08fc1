"""/v1/devices: device CRUD and bulk import."""

from __future__ import annotations

import tempfile
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from fleetwarden.api.auth import READ, WRITE, client_ip, registry_of, require
from fleetwarden.errors import ValidationError
from fleetwarden.registry import Principal
from fleetwarden.registry.schemas import (
    DeviceCreate,
    DeviceOut,
    DeviceUpdate,
    ImportResult,
)

router = APIRouter(prefix="/v1/devices", tags=["devices"])


Reader = Annotated[Principal, Depends(require(READ))]
Writer = Annotated[Principal, Depends(require(WRITE))]

IMPORT_TYPES = {
    "text/csv": "csv",
    "application/x-ndjson": "jsonl",
    "application/jsonl": "jsonl",
    "application/json-lines": "jsonl",
}


@router.get("", response_model=list[DeviceOut])
def list_devices(
    request: Request,
    _: Reader,
    group: str | None = None,
    after: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[DeviceOut]:
    """Devices ordered by id; pass the last id seen as ``after`` for the next page."""
    return registry_of(request).list_devices(group=group, after=after, limit=limit)


@router.post("", response_model=DeviceOut, status_code=201)
def add_device(request: Request, body: DeviceCreate, who: Writer) -> DeviceOut:
    return registry_of(request).add_device(body, who.actor(client_ip(request)))


@router.post("/import", response_model=ImportResult, status_code=201)
async def import_devices(request: Request, who: Writer) -> ImportResult:
    """Bulk import: ``text/csv`` or ``application/x-ndjson`` body; all or nothing."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fmt = IMPORT_TYPES.get(ctype)
    if fmt is None:
        raise ValidationError(
            f"unsupported content type {ctype or '(none)'!r}: use text/csv or application/x-ndjson"
        )
    registry = registry_of(request)
    actor = who.actor(client_ip(request))
    batch = request.app.state.settings.import_batch_size
    # Spool to disk past 8 MiB so a large upload never sits whole in memory.
    with tempfile.SpooledTemporaryFile(max_size=8 << 20) as spool:
        async for chunk in request.stream():
            spool.write(chunk)
        size = spool.tell()
        spool.seek(0)
        return await run_in_threadpool(
            registry.import_devices,
            spool,  # type: ignore[arg-type]
            fmt=fmt,
            actor=actor,
            batch_size=batch,
            source="api upload",
            size_hint=size,
        )


@router.get("/{device_id}", response_model=DeviceOut)
def get_device(request: Request, device_id: str, _: Reader) -> DeviceOut:
    return registry_of(request).get_device(device_id)


@router.patch("/{device_id}", response_model=DeviceOut)
def update_device(request: Request, device_id: str, body: DeviceUpdate, who: Writer) -> DeviceOut:
    return registry_of(request).update_device(device_id, body, who.actor(client_ip(request)))


@router.delete("/{device_id}", status_code=204)
def remove_device(request: Request, device_id: str, who: Writer) -> Response:
    registry_of(request).remove_device(device_id, who.actor(client_ip(request)))
    return Response(status_code=204)
