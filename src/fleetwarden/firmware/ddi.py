"""hawkBit DDI-compatible device API (subset), so stock hawkBit clients can update.

Routes (``{tenant}`` is ``firmware.ddi_tenant``, ``DEFAULT`` unless configured)::

    GET  /{tenant}/controller/v1/{controllerId}                       controller base
    GET  /{tenant}/controller/v1/{controllerId}/deploymentBase/{actionId}
    POST /{tenant}/controller/v1/{controllerId}/deploymentBase/{actionId}/feedback
    PUT  /{tenant}/controller/v1/{controllerId}/configData            accepted, ignored
    GET  /{tenant}/controller/v1/{controllerId}/softwaremodules/{moduleId}/artifacts/{file}
    GET  .../artifacts/{file}.MD5SUM

Authentication: the device is identified by its TLS client certificate (control C2).
The TLS layer is not ours: the route depends on :func:`authenticated_device`, which asks
``app.state.device_authenticator`` (a callable ``(Request) -> str | None``) for the
device id the verified certificate names. Without an authenticator every DDI call is
refused (401), so the API can never be open by accident.

Invariants:
- the controller id in the path must equal the authenticated device id (403 otherwise)
  and name a registered, active device;
- a device only sees the deployment the rollout controller scheduled for it, and may
  only download the artifact of that deployment;
- feedback bodies are validated and size-limited (the app's body limit applies);
  feedback for an action that is not the device's open deployment is refused (409 not
  applied), never applied elsewhere;
- under ``up``, feedback goes through the component's :class:`FeedbackBatcher` (one
  transaction for many concurrent reports); without it, one transaction per report.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from fleetwarden.errors import AuthError, ConflictError, NotFoundError, PermissionDeniedError
from fleetwarden.events import authentication
from fleetwarden.firmware.rollout import Feedback, FeedbackBatcher, RolloutService
from fleetwarden.firmware.service import repository_for
from fleetwarden.registry import Registry
from fleetwarden.settings import Settings

DeviceAuthenticator = Callable[[Request], str | None]

router = APIRouter(tags=["hawkBit DDI"])


def authenticated_device(request: Request) -> str:
    """The device id proven by the TLS client certificate (see module docstring)."""
    auth: DeviceAuthenticator | None = getattr(request.app.state, "device_authenticator", None)
    registry: Registry = request.app.state.registry
    reason = "no verified device certificate"
    try:
        device = auth(request) if auth is not None else None
    except AuthError as exc:  # the authenticator's refusal names its reason
        device, reason = None, exc.diagnostics()
    if device is None:
        with registry.session() as s:
            registry.record(
                s,
                authentication(
                    device_uid=None,
                    src_ip=request.client.host if request.client else None,
                    success=False,
                    message=f"DDI request refused: {reason}",
                    protocol="hawkbit-ddi",
                ),
            )
        raise AuthError(f"a verified device certificate is required ({reason})")
    return device


class _Result(BaseModel):
    model_config = ConfigDict(extra="ignore")
    finished: Literal["success", "failure", "none"] = "none"


class _Status(BaseModel):
    model_config = ConfigDict(extra="ignore")
    execution: Literal[
        "closed",
        "proceeding",
        "canceled",
        "scheduled",
        "rejected",
        "resumed",
        "downloaded",
        "download",
    ]
    result: _Result = Field(default_factory=_Result)
    details: list[str] = Field(default_factory=list, max_length=100)


class DdiFeedback(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: int | str | None = Field(default=None, union_mode="left_to_right")
    time: str | None = Field(default=None, max_length=64)
    status: _Status


def _settings(request: Request) -> Settings:
    s: Settings = request.app.state.settings
    return s


def _check(request: Request, tenant: str, controller_id: str, device: str) -> None:
    if tenant != _settings(request).firmware.ddi_tenant:
        raise NotFoundError(f"unknown tenant {tenant!r}")
    if controller_id != device:
        raise PermissionDeniedError(
            f"certificate names device {device!r}, not controller {controller_id!r}"
        )
    registry: Registry = request.app.state.registry
    dev = registry.get_device(device)  # NotFoundError for unknown devices
    if dev.status != "active":
        raise PermissionDeniedError(f"device {device} is {dev.status}")


def _base(request: Request, tenant: str, controller_id: str) -> str:
    return str(request.base_url).rstrip("/") + f"/{tenant}/controller/v1/{controller_id}"


# Artifact hashes other than SHA-256 (SWUpdate checks SHA-1) are computed once per file.
_hash_cache: dict[str, dict[str, str]] = {}
_hash_lock = threading.Lock()


def _hashes(path: Path, sha256: str) -> dict[str, str]:
    with _hash_lock:
        if sha256 in _hash_cache:
            return _hash_cache[sha256]
    md5 = hashlib.md5(usedforsecurity=False)
    sha1 = hashlib.sha1(usedforsecurity=False)
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            md5.update(chunk)
            sha1.update(chunk)
    out = {"sha1": sha1.hexdigest(), "md5": md5.hexdigest(), "sha256": sha256}
    with _hash_lock:
        _hash_cache[sha256] = out
    return out


def _pending(request: Request, device: str) -> dict[str, Any] | None:
    return RolloutService(request.app.state.registry).pending_for(device)


@router.get("/{tenant}/controller/v1/{controller_id}")
def controller_base(
    tenant: str, controller_id: str, request: Request, device: str = Depends(authenticated_device)
) -> dict[str, Any]:
    _check(request, tenant, controller_id, device)
    out: dict[str, Any] = {
        "config": {"polling": {"sleep": _settings(request).firmware.ddi_polling_interval}},
        "_links": {},
    }
    dep = _pending(request, device)
    if dep is not None:
        out["_links"]["deploymentBase"] = {
            "href": f"{_base(request, tenant, controller_id)}/deploymentBase/{dep['action_id']}"
            f"?c={dep['sha256'][:8]}"
        }
    return out


@router.put("/{tenant}/controller/v1/{controller_id}/configData")
def config_data(
    tenant: str, controller_id: str, request: Request, device: str = Depends(authenticated_device)
) -> JSONResponse:
    _check(request, tenant, controller_id, device)
    return JSONResponse({}, status_code=200)


def _deployment(request: Request, device: str, action_id: int) -> dict[str, Any]:
    dep = _pending(request, device)
    if dep is None or dep["action_id"] != action_id:
        raise NotFoundError(f"no open action {action_id} for device {device}")
    return dep


@router.get("/{tenant}/controller/v1/{controller_id}/deploymentBase/{action_id}")
def deployment_base(
    tenant: str,
    controller_id: str,
    action_id: int,
    request: Request,
    device: str = Depends(authenticated_device),
) -> dict[str, Any]:
    _check(request, tenant, controller_id, device)
    dep = _deployment(request, device, action_id)
    repo = repository_for(_settings(request))
    path = repo.target_path(dep["target_name"])
    if path is None:
        raise NotFoundError(f"artifact of action {action_id} is not in the repository")
    filename = dep["target_name"].rsplit("/", 1)[1]
    href = (
        f"{_base(request, tenant, controller_id)}/softwaremodules/{action_id}/artifacts/{filename}"
    )
    return {
        "id": str(action_id),
        "deployment": {
            "download": "forced",
            "update": "forced",
            "chunks": [
                {
                    "part": "os",
                    "version": dep["version"],
                    "name": dep["product"],
                    "artifacts": [
                        {
                            "filename": filename,
                            "hashes": _hashes(path, dep["sha256"]),
                            "size": dep["size"],
                            "_links": {
                                "download": {"href": href},
                                "download-http": {"href": href},
                                "md5sum": {"href": f"{href}.MD5SUM"},
                                "md5sum-http": {"href": f"{href}.MD5SUM"},
                            },
                        }
                    ],
                    "metadata": [
                        {"key": "tuf_target", "value": dep["target_name"]},
                        {"key": "security_counter", "value": str(dep["security_counter"])},
                        {"key": "rollout", "value": dep["rollout"]},
                    ],
                }
            ],
        },
    }


@router.post("/{tenant}/controller/v1/{controller_id}/deploymentBase/{action_id}/feedback")
async def feedback(
    tenant: str,
    controller_id: str,
    action_id: int,
    body: DdiFeedback,
    request: Request,
    device: str = Depends(authenticated_device),
) -> JSONResponse:
    await run_in_threadpool(_check, request, tenant, controller_id, device)
    dep = await run_in_threadpool(_pending, request, device)
    if dep is None or dep["action_id"] != action_id:
        raise ConflictError(f"action {action_id} is not open for device {device}")
    st = body.status
    status: Literal["proceeding", "success", "failure"]
    if st.execution == "closed":
        status = "success" if st.result.finished == "success" else "failure"
    elif st.execution in {"rejected", "canceled"}:
        status = "failure"
    else:
        status = "proceeding"
    detail = "; ".join(d[:200] for d in st.details[:5]) or None
    report = Feedback(device, status, detail, dep["rollout"], actor=f"device:{device}")
    batcher: FeedbackBatcher | None = getattr(request.app.state, "feedback_batcher", None)
    if batcher is not None:
        applied = await batcher.submit(report)
    else:
        res = await run_in_threadpool(
            RolloutService(request.app.state.registry).record_feedback, [report]
        )
        applied = res.applied == 1
    if not applied:
        raise ConflictError(f"action {action_id} is no longer open for device {device}")
    return JSONResponse({}, status_code=200)


def _artifact(request: Request, device: str, module_id: int, filename: str) -> tuple[Path, str]:
    dep = _deployment(request, device, module_id)
    if dep["target_name"].rsplit("/", 1)[1] != filename:
        raise NotFoundError(f"no artifact {filename!r} in action {module_id}")
    path = repository_for(_settings(request)).target_path(dep["target_name"])
    if path is None:
        raise NotFoundError("artifact missing from the repository")
    return path, dep["sha256"]


@router.get(
    "/{tenant}/controller/v1/{controller_id}/softwaremodules/{module_id}/artifacts/{filename}",
    response_model=None,
)
def artifact(
    tenant: str,
    controller_id: str,
    module_id: int,
    filename: str,
    request: Request,
    device: str = Depends(authenticated_device),
) -> FileResponse | PlainTextResponse:
    _check(request, tenant, controller_id, device)
    if filename.endswith(".MD5SUM"):
        base = filename[: -len(".MD5SUM")]
        path, sha = _artifact(request, device, module_id, base)
        return PlainTextResponse(f"{_hashes(path, sha)['md5']}  {base}\n")
    path, _ = _artifact(request, device, module_id, filename)
    # FileResponse answers Range requests, which hawkBit clients use to resume.
    return FileResponse(path, media_type="application/octet-stream", filename=filename)
