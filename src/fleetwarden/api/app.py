"""Building the FastAPI application.

The app holds the registry and the event bus on ``app.state``; routes are thin: they
validate (pydantic), authorise (``auth.require``) and call the registry service.
Errors from ``fleetwarden.errors`` become JSON ``{"error", "detail"}`` with the status
the error class names, so no expected failure is ever a 500.
"""

from __future__ import annotations

import logging

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.types import ASGIApp

from fleetwarden import __version__
from fleetwarden.api.auth import READ, require
from fleetwarden.api.limits import BodyLimitMiddleware
from fleetwarden.api.routes import auditlog, detect, devices, groups, tokens
from fleetwarden.errors import AuthError, Error
from fleetwarden.firmware import api as firmware_api
from fleetwarden.identity import api as identity_api
from fleetwarden.identity.est import EstEndpoint
from fleetwarden.registry import Registry
from fleetwarden.registry.schemas import explain
from fleetwarden.settings import Settings

log = logging.getLogger(__name__)


class _Api(FastAPI):
    """The admin API, with EST in front of its whole middleware stack, the framework's
    own error and telemetry layers included: EST is a fixed wire protocol with its own
    size limits and error answers (see :class:`EstEndpoint`)."""

    def build_middleware_stack(self) -> ASGIApp:
        return EstEndpoint(super().build_middleware_stack())


def create_app(settings: Settings, registry: Registry) -> FastAPI:
    app = _Api(
        title="fleetwarden",
        version=__version__,
        description="IoT fleet security control plane: admin API.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.registry = registry
    app.add_middleware(
        BodyLimitMiddleware,
        limit=settings.max_request_bytes,
        large_paths={
            "/v1/devices/import": settings.max_import_bytes,
            firmware_api.UPLOAD_PATH: settings.firmware.max_image_bytes,
        },
    )

    @app.exception_handler(Error)
    async def _error(_: Request, exc: Error) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if type(exc) is AuthError else None
        return JSONResponse(
            {"error": type(exc).__name__, "detail": exc.diagnostics()},
            status_code=exc.http_status,
            headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())[:20]
        problems = [{"loc": [str(x) for x in e.get("loc", ())], "msg": explain(e)} for e in errors]
        detail = "invalid request: " + "; ".join(explain(e) for e in errors[:3])
        return JSONResponse(
            {"error": "ValidationError", "detail": detail, "problems": problems},
            status_code=422,
        )

    @app.get("/health", tags=["meta"])
    def health() -> dict[str, str]:
        """Liveness and database reachability; the only route without a token."""
        try:
            registry.count_devices()
        except Exception:  # the probe must answer, whatever the database does
            log.warning("health check: database unavailable")
            return {"status": "degraded", "database": "unavailable"}
        return {"status": "ok", "database": "ok"}

    @app.get("/v1/version", tags=["meta"], dependencies=[Depends(require(READ))])
    def version() -> dict[str, str]:
        return {"name": "fleetwarden", "version": __version__}

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require(READ))])
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[Depends(require(READ))])
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="fleetwarden API")

    app.include_router(devices.router)
    app.include_router(groups.router)
    app.include_router(tokens.router)
    app.include_router(auditlog.router)
    app.include_router(detect.router)
    app.include_router(firmware_api.router)
    app.include_router(identity_api.router)
    return app
