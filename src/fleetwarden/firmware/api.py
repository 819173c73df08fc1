"""/v1/firmware: admin API of the firmware control, plus the hawkBit DDI device API.

Admin routes use API tokens (READ to look, WRITE to change); the DDI routes are for
devices and authenticate them by certificate (see :mod:`fleetwarden.firmware.ddi`).
Image upload streams the body to a temporary file (limit ``firmware.max_image_bytes``)
and then goes through exactly the same publish path as the CLI.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from fleetwarden.api.auth import READ, WRITE, client_ip, registry_of, require
from fleetwarden.errors import TooLargeError
from fleetwarden.firmware import ddi
from fleetwarden.firmware.rollout import RolloutService, Stage
from fleetwarden.firmware.service import FirmwareService
from fleetwarden.registry import Principal

router = APIRouter()
admin = APIRouter(prefix="/v1/firmware", tags=["firmware"])
Reader = Annotated[Principal, Depends(require(READ))]
Writer = Annotated[Principal, Depends(require(WRITE))]
UPLOAD_PATH = "/v1/firmware/releases"


def _svc(request: Request) -> FirmwareService:
    return FirmwareService(registry_of(request), request.app.state.settings)


def _rollouts(request: Request) -> RolloutService:
    return RolloutService(registry_of(request))


class ProductIn(BaseModel):
    name: str = Field(max_length=64)
    description: str | None = Field(default=None, max_length=1000)


class KeyIn(BaseModel):
    public_key_pem: str = Field(max_length=16_384)
    label: str | None = Field(default=None, max_length=128)


class RolloutIn(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    product: str = Field(max_length=64)
    version: str = Field(max_length=32)
    group: str | None = Field(default=None, max_length=128)
    devices: list[str] = Field(default_factory=list, max_length=100_000)
    stages: list[str] = Field(default_factory=list, max_length=100)
    success_threshold: int = Field(default=95, ge=1, le=100)
    error_threshold: int = Field(default=10, ge=1, le=100)
    error_action: str = Field(default="pause", pattern="^(pause|stop)$")


@admin.get("/products")
def list_products(request: Request, _: Reader) -> list[str]:
    return _svc(request).list_products()


@admin.post("/products", status_code=201)
def add_product(request: Request, body: ProductIn, who: Writer) -> dict[str, str]:
    _svc(request).add_product(body.name, who.actor(client_ip(request)), body.description)
    return {"name": body.name}


@admin.get("/products/{product}/keys")
def list_keys(request: Request, product: str, _: Reader) -> list[dict[str, Any]]:
    return [k.__dict__ for k in _svc(request).list_keys(product)]


@admin.post("/products/{product}/keys", status_code=201)
def trust_key(request: Request, product: str, body: KeyIn, who: Writer) -> dict[str, Any]:
    k = _svc(request).trust_key(
        product, body.public_key_pem.encode(), who.actor(client_ip(request)), body.label
    )
    return k.__dict__


@admin.delete("/products/{product}/keys/{key_id}", status_code=204)
def revoke_key(request: Request, product: str, key_id: str, who: Writer) -> None:
    _svc(request).revoke_key(product, key_id, who.actor(client_ip(request)))


@admin.get("/products/{product}/releases")
def list_releases(request: Request, product: str, _: Reader) -> list[dict[str, Any]]:
    return [r.as_dict() for r in _svc(request).list_releases(product)]


@admin.post("/releases", status_code=201)
async def publish(
    request: Request,
    who: Writer,
    product: Annotated[str, Query(max_length=64)],
    version: Annotated[str, Query(max_length=32)],
) -> dict[str, Any]:
    """Upload a signed MCUboot image (``application/octet-stream``) and publish it."""
    settings = request.app.state.settings
    limit = settings.firmware.max_image_bytes
    # uploads land next to the repository (same filesystem, no size surprise in /tmp)
    spool = settings.data_dir / "firmware" / "uploads"
    spool.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="fw-upload-", suffix=".bin", dir=spool)
    try:
        size = 0
        with os.fdopen(fd, "wb") as fh:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise TooLargeError(f"image larger than {limit} bytes")
                fh.write(chunk)
        rel = await run_in_threadpool(
            _svc(request).publish, Path(name), product, version, who.actor(client_ip(request))
        )
        return rel.as_dict()
    finally:
        os.unlink(name)


@admin.get("/rollouts")
def list_rollouts(request: Request, _: Reader) -> list[dict[str, Any]]:
    return _rollouts(request).all()


@admin.post("/rollouts", status_code=201)
def create_rollout(request: Request, body: RolloutIn, who: Writer) -> dict[str, Any]:
    return _rollouts(request).create(
        body.name,
        body.product,
        body.version,
        who.actor(client_ip(request)),
        group=body.group,
        devices=body.devices,
        stages=[Stage.parse(s) for s in body.stages],
        success_threshold=body.success_threshold,
        error_threshold=body.error_threshold,
        error_action=body.error_action,
    )


@admin.get("/rollouts/{name}")
def get_rollout(request: Request, name: str, _: Reader) -> dict[str, Any]:
    out = _rollouts(request).get(name)
    out["deployments"] = _rollouts(request).deployment_state(name)
    return out


def _transition(op: str) -> Any:
    def handler(request: Request, name: str, who: Writer) -> dict[str, Any]:
        result: dict[str, Any] = getattr(_rollouts(request), op)(
            name, who.actor(client_ip(request))
        )
        return result

    handler.__name__ = f"rollout_{op}"
    return handler


for _op in ("pause", "resume", "cancel", "rollback"):
    admin.add_api_route(f"/rollouts/{{name}}/{_op}", _transition(_op), methods=["POST"])

router.include_router(admin)
router.include_router(ddi.router)
