"""/v1/groups: group CRUD and membership."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from fleetwarden.api.auth import READ, WRITE, client_ip, registry_of, require
from fleetwarden.registry import Principal
from fleetwarden.registry.schemas import GroupCreate, GroupOut, GroupUpdate

router = APIRouter(prefix="/v1/groups", tags=["groups"])
Reader = Annotated[Principal, Depends(require(READ))]
Writer = Annotated[Principal, Depends(require(WRITE))]


@router.get("", response_model=list[GroupOut])
def list_groups(request: Request, _: Reader) -> list[GroupOut]:
    return registry_of(request).list_groups()


@router.post("", response_model=GroupOut, status_code=201)
def create_group(request: Request, body: GroupCreate, who: Writer) -> GroupOut:
    return registry_of(request).create_group(body, who.actor(client_ip(request)))


@router.get("/{name}", response_model=GroupOut)
def get_group(request: Request, name: str, _: Reader) -> GroupOut:
    return registry_of(request).get_group(name)


@router.patch("/{name}", response_model=GroupOut)
def update_group(request: Request, name: str, body: GroupUpdate, who: Writer) -> GroupOut:
    return registry_of(request).update_group(name, body, who.actor(client_ip(request)))


@router.delete("/{name}", status_code=204)
def remove_group(request: Request, name: str, who: Writer) -> Response:
    registry_of(request).remove_group(name, who.actor(client_ip(request)))
    return Response(status_code=204)


@router.put("/{name}/devices/{device_id}", status_code=204)
def add_member(request: Request, name: str, device_id: str, who: Writer) -> Response:
    registry_of(request).set_membership(name, device_id, True, who.actor(client_ip(request)))
    return Response(status_code=204)


@router.delete("/{name}/devices/{device_id}", status_code=204)
def remove_member(request: Request, name: str, device_id: str, who: Writer) -> Response:
    registry_of(request).set_membership(name, device_id, False, who.actor(client_ip(request)))
    return Response(status_code=204)
