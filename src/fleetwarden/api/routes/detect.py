"""/v1/alerts and /v1/detect: alerts lifecycle, suppressions, rules, metric intake (C9)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from pydantic import BaseModel

from fleetwarden.api.auth import READ, WRITE, client_ip, registry_of, require
from fleetwarden.detect.alerts import (
    AlertOut,
    AlertStatus,
    AlertStore,
    ResolveBody,
    SuppressBody,
    SuppressionOut,
    Verification,
)
from fleetwarden.detect.mitigation import mitigations
from fleetwarden.detect.rules import AlertSeverity, Rule
from fleetwarden.detect.service import DetectService, run_mitigation
from fleetwarden.errors import DatabaseUnavailableError, TooLargeError, ValidationError
from fleetwarden.registry import Principal

router = APIRouter(tags=["detect"])
Reader = Annotated[Principal, Depends(require(READ))]
Writer = Annotated[Principal, Depends(require(WRITE))]
MAX_BATCH = 10_000


class VerifyBody(BaseModel):
    verification: Verification


def _store(request: Request) -> AlertStore:
    return AlertStore(registry_of(request))


def _service(request: Request) -> DetectService | None:
    return getattr(request.app.state, "detect", None)


@router.get("/v1/alerts", response_model=list[AlertOut])
def list_alerts(
    request: Request,
    _: Reader,
    status: AlertStatus | None = None,
    device: str | None = None,
    severity: AlertSeverity | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AlertOut]:
    return _store(request).list_alerts(
        status=status, device_id=device, severity=severity, limit=limit
    )


@router.get("/v1/alerts/suppressions", response_model=list[SuppressionOut])
def list_suppressions(request: Request, _: Reader) -> list[SuppressionOut]:
    return _store(request).suppressions()


@router.post("/v1/alerts/suppressions", response_model=SuppressionOut, status_code=201)
def suppress(request: Request, body: SuppressBody, who: Writer) -> SuppressionOut:
    return _store(request).suppress(body, who.actor(client_ip(request)))


@router.get("/v1/alerts/{alert_id}", response_model=AlertOut)
def get_alert(request: Request, alert_id: str, _: Reader) -> AlertOut:
    return _store(request).get(alert_id)


@router.post("/v1/alerts/{alert_id}/ack", response_model=AlertOut)
def ack(request: Request, alert_id: str, who: Writer) -> AlertOut:
    return _store(request).acknowledge(alert_id, who.actor(client_ip(request)))


@router.post("/v1/alerts/{alert_id}/resolve", response_model=AlertOut)
def resolve(request: Request, alert_id: str, body: ResolveBody, who: Writer) -> AlertOut:
    return _store(request).resolve(
        alert_id, who.actor(client_ip(request)), verification=body.verification, note=body.note
    )


@router.post("/v1/alerts/{alert_id}/verify", response_model=AlertOut)
def verify(request: Request, alert_id: str, body: VerifyBody, who: Writer) -> AlertOut:
    return _store(request).verify(alert_id, body.verification, who.actor(client_ip(request)))


@router.post("/v1/alerts/{alert_id}/approve", response_model=AlertOut)
def approve(request: Request, alert_id: str, who: Writer) -> AlertOut:
    """Approve (run) the mitigation the alert's rule declared."""
    registry = registry_of(request)
    settings = request.app.state.settings
    svc = _service(request)
    # Under `up`, the detection control's mitigations reach the identity service and the
    # gateway; a bare API app still finds the identity service on its state.
    available = (
        svc.mitigations
        if svc is not None and svc.mitigations
        else mitigations(registry, settings.detect.quarantine_group, state=request.app.state)
    )
    return run_mitigation(
        AlertStore(registry),
        available,
        alert_id,
        who.actor(client_ip(request)),
    )


@router.get("/v1/detect/rules", response_model=list[Rule])
def list_rules(request: Request, _: Reader) -> list[Rule]:
    return _store(request).rules()


@router.put("/v1/detect/rules/{name}", response_model=Rule)
def put_rule(request: Request, name: str, body: Rule, who: Writer) -> Rule:
    if body.name != name:
        raise ValidationError(f"rule name in the body ({body.name!r}) differs from the path")
    rule = _store(request).put_rule(body, who.actor(client_ip(request)))
    svc = _service(request)
    if svc is not None:
        svc.reload_rules()
    return rule


@router.delete("/v1/detect/rules/{name}", status_code=204)
def delete_rule(request: Request, name: str, who: Writer) -> Response:
    _store(request).delete_rule(name, who.actor(client_ip(request)))
    svc = _service(request)
    if svc is not None:
        svc.reload_rules()
    return Response(status_code=204)


@router.post("/v1/detect/metrics")
async def ingest(request: Request, _: Writer, body: Annotated[list[Any], Body()]) -> dict[str, Any]:
    """Feed metric windows (contract fleetwarden.detect.metric_window/1), up to 10,000."""
    svc = _service(request)
    if svc is None:
        raise DatabaseUnavailableError("detection is not running in this process (fleetwarden up)")
    if len(body) > MAX_BATCH:
        raise TooLargeError(f"at most {MAX_BATCH} datapoints per request")
    return await svc.ingest(body)


@router.get("/v1/detect/status")
def status(request: Request, _: Reader) -> dict[str, Any]:
    svc = _service(request)
    if svc is None or svc.intake is None or svc.detector is None:
        return {"running": False}
    return {
        "running": True,
        "intake": svc.intake.summary(),
        "recent_rejections": [
            {"reason": r.reason, "device_id": r.device_id, "detail": r.detail}
            for r in list(svc.intake.recent)[-20:]
        ],
        "windows": svc.detector.windows,
        "devices_with_baseline": len(svc.detector.baselines.devices),
        "rules": [r.name for r in svc.detector.rules.rules],
        "sinks": {k: vars(v) for k, v in (svc.dispatcher.stats if svc.dispatcher else {}).items()},
        "suppressed": svc.store.suppressed if svc.store else 0,
    }
