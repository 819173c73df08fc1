"""/v1/tokens: API token management (admin only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from fleetwarden.api.auth import ADMIN, client_ip, registry_of, require
from fleetwarden.registry import Principal
from fleetwarden.registry.schemas import TokenCreate, TokenCreated, TokenOut

router = APIRouter(prefix="/v1/tokens", tags=["tokens"])
Admin = Annotated[Principal, Depends(require(ADMIN))]


@router.get("", response_model=list[TokenOut])
def list_tokens(request: Request, _: Admin) -> list[TokenOut]:
    return registry_of(request).list_tokens()


@router.post("", response_model=TokenCreated, status_code=201)
def create_token(request: Request, body: TokenCreate, who: Admin) -> TokenCreated:
    """Create a token; the secret is in the response once and never again."""
    return registry_of(request).create_token(body, who.actor(client_ip(request)))


@router.delete("/{token_id}", response_model=TokenOut)
def revoke_token(request: Request, token_id: str, who: Admin) -> TokenOut:
    return registry_of(request).revoke_token(token_id, who.actor(client_ip(request)))
