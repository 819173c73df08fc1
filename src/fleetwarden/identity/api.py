"""Admin API of the identity control: enrolment tokens, certificates, revocation,
rotation policy, manual approval. (The device-facing EST routes are in ``est``.)"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from fleetwarden.api.auth import ADMIN, READ, WRITE, client_ip, require
from fleetwarden.identity import est
from fleetwarden.identity.errors import CaNotInitializedError
from fleetwarden.identity.service import IdentityService
from fleetwarden.registry import Principal

router = APIRouter()
router.include_router(est.router)


class RevokeIn(BaseModel):
    reason: str = Field(default="unspecified", max_length=32)
    serial: str | None = Field(default=None, max_length=64, pattern=r"^[0-9a-fA-F]+$")


class TokenIn(BaseModel):
    ttl_hours: float | None = Field(default=None, gt=0, le=24 * 90)


class PolicyIn(BaseModel):
    lifetime_days: int = Field(ge=1, le=3650)
    renew_fraction: float = Field(default=2 / 3, gt=0.1, lt=1)
    max_key_age_days: int = Field(ge=1, le=36500)
    allow_key_reuse: bool = False


def _svc(request: Request) -> IdentityService:
    svc: IdentityService | None = getattr(request.app.state, "identity", None)
    if svc is None:
        raise CaNotInitializedError("the fleet CA is not initialised (`fleetwarden ca init`)")
    return svc


@router.post("/v1/devices/{device_id}/enrollment-token", tags=["identity"])
async def create_token(
    device_id: str,
    request: Request,
    body: TokenIn | None = None,
    who: Principal = Depends(require(WRITE)),
) -> dict[str, Any]:
    from datetime import timedelta

    svc = _svc(request)
    ttl = timedelta(hours=body.ttl_hours) if body and body.ttl_hours else None
    token = await run_in_threadpool(svc.create_token, device_id, who.actor(client_ip(request)), ttl)
    return {"device_id": device_id, "token": token}


@router.get("/v1/devices/{device_id}/certificates", tags=["identity"])
async def certificates(
    device_id: str, request: Request, _: Principal = Depends(require(READ))
) -> dict[str, Any]:
    svc = _svc(request)
    certs = await run_in_threadpool(svc.certificates, device_id)
    key = await run_in_threadpool(svc.key_state, device_id)
    return {"device_id": device_id, "certificates": certs, "key": key}


@router.post("/v1/devices/{device_id}/revoke", tags=["identity"])
async def revoke(
    device_id: str,
    body: RevokeIn,
    request: Request,
    who: Principal = Depends(require(WRITE)),
) -> dict[str, Any]:
    svc = _svc(request)
    serials = await run_in_threadpool(
        svc.revoke, device_id, body.reason, who.actor(client_ip(request)), serial=body.serial
    )
    await run_in_threadpool(svc.regenerate_crl)
    return {"device_id": device_id, "revoked": serials, "reason": body.reason}


@router.put("/v1/groups/{group}/rotation-policy", tags=["identity"])
async def set_policy(
    group: str, body: PolicyIn, request: Request, who: Principal = Depends(require(WRITE))
) -> dict[str, Any]:
    svc = _svc(request)
    await run_in_threadpool(
        lambda: svc.set_policy(
            group,
            lifetime_days=body.lifetime_days,
            renew_fraction=body.renew_fraction,
            max_key_age_days=body.max_key_age_days,
            allow_key_reuse=body.allow_key_reuse,
            actor=who.actor(client_ip(request)),
        )
    )
    return {"group": group, **body.model_dump()}


@router.get("/v1/identity/requests", tags=["identity"])
async def pending(request: Request, _: Principal = Depends(require(READ))) -> list[dict[str, Any]]:
    return await run_in_threadpool(_svc(request).pending_requests)


@router.post("/v1/identity/requests/{request_id}/{decision}", tags=["identity"])
async def decide(
    request_id: int, decision: str, request: Request, who: Principal = Depends(require(ADMIN))
) -> dict[str, Any]:
    from fleetwarden.errors import ValidationError

    if decision not in {"approve", "reject"}:
        raise ValidationError("decision must be approve or reject")
    svc = _svc(request)
    device = await run_in_threadpool(
        svc.decide, request_id, decision == "approve", who.actor(client_ip(request))
    )
    return {"request_id": request_id, "device_id": device, "decision": decision}
