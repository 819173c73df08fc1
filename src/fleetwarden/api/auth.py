"""Bearer-token authentication and role checks for the admin API.

Every route except ``GET /health`` depends on :func:`require`. A refused call is recorded
as an API Activity event with status Failure (who, from where, why) before the 401/403.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from fleetwarden.errors import AuthError, PermissionDeniedError
from fleetwarden.registry import Actor, Principal, Registry
from fleetwarden.registry.schemas import Role

_bearer = HTTPBearer(auto_error=False, description="API token from `fleetwarden token create`")

#: which roles may do what: readers see everything but tokens; writers change the fleet
READ = frozenset({Role.ADMIN, Role.OPERATOR, Role.AUDITOR})
WRITE = frozenset({Role.ADMIN, Role.OPERATOR})
ADMIN = frozenset({Role.ADMIN})


def registry_of(request: Request) -> Registry:
    return request.app.state.registry  # type: ignore[no-any-return]


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def require(roles: frozenset[Role]) -> Callable[..., Principal]:
    def dependency(
        request: Request,
        creds: HTTPAuthorizationCredentials | None = Depends(_bearer),
    ) -> Principal:
        registry: Registry = request.app.state.registry
        operation = f"{request.method} {request.url.path}"
        ip = client_ip(request)
        if creds is None or creds.scheme.lower() != "bearer":
            registry.record_denied(Actor("anonymous", ip, "api"), operation, "no API token")
            raise AuthError("an API token is required (Authorization: Bearer ...)")
        try:
            principal = registry.authenticate(creds.credentials)
        except AuthError as exc:
            registry.record_denied(Actor("anonymous", ip, "api"), operation, str(exc))
            raise
        if principal.role not in roles:
            registry.record_denied(
                principal.actor(ip), operation, f"role {principal.role.value} not allowed"
            )
            raise PermissionDeniedError(f"role {principal.role.value} may not call {operation}")
        return principal

    return dependency
