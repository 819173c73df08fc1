"""Admin API: token auth, roles, CRUD, bulk import, limits, errors as JSON."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fleetwarden.api import create_app
from fleetwarden.registry import Actor, Registry
from fleetwarden.registry.schemas import Role, TokenCreate
from fleetwarden.settings import load_settings


@pytest.fixture
def client(registry: Registry, tmp_path: Path) -> Iterator[TestClient]:
    settings = load_settings(tmp_path, max_request_bytes=4096, max_import_bytes=1 << 20)
    with TestClient(create_app(settings, registry)) as c:
        yield c


def _token(registry: Registry, role: Role) -> dict[str, str]:
    tok = registry.create_token(TokenCreate(name=f"t-{role.value}", role=role), Actor("test"))
    return {"Authorization": f"Bearer {tok.token}"}


def test_health_is_open_everything_else_needs_a_token(
    client: TestClient, registry: Registry
) -> None:
    assert client.get("/health").json() == {"status": "ok", "database": "ok"}
    for method, path in [
        ("GET", "/v1/devices"),
        ("POST", "/v1/devices"),
        ("GET", "/v1/groups"),
        ("GET", "/v1/tokens"),
        ("GET", "/v1/version"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("POST", "/v1/devices/import"),
    ]:
        r = client.request(method, path)
        assert r.status_code == 401, (method, path)
        assert r.json()["error"] == "AuthError"
        assert r.headers["www-authenticate"] == "Bearer"
    r = client.get("/v1/devices", headers={"Authorization": "Bearer fwt_nope_nope"})
    assert r.status_code == 401 and "unknown" in r.json()["detail"]
    denied = [p for _, p in registry.pending_events(1000) if p["status_id"] == 2]
    assert len(denied) == 9
    assert denied[0]["actor"]["user"]["name"] == "anonymous"


def test_openapi_served_with_token(client: TestClient, registry: Registry) -> None:
    h = _token(registry, Role.AUDITOR)
    spec = client.get("/openapi.json", headers=h).json()
    assert spec["info"]["title"] == "fleetwarden"
    assert "/v1/devices/{device_id}" in spec["paths"]
    assert client.get("/docs", headers=h).status_code == 200
    assert client.get("/v1/version", headers=h).json()["name"] == "fleetwarden"


def test_roles(client: TestClient, registry: Registry) -> None:
    aud, op, adm = (_token(registry, r) for r in (Role.AUDITOR, Role.OPERATOR, Role.ADMIN))
    body = {"device_id": "d1"}
    assert client.post("/v1/devices", json=body, headers=aud).status_code == 403
    assert client.post("/v1/devices", json=body, headers=op).status_code == 201
    assert client.get("/v1/devices/d1", headers=aud).status_code == 200
    assert client.get("/v1/tokens", headers=op).status_code == 403
    assert client.get("/v1/tokens", headers=adm).status_code == 200
    assert client.delete("/v1/devices/d1", headers=aud).status_code == 403
    assert registry.count_devices() == 1


def test_device_and_group_crud_emit_events(client: TestClient, registry: Registry) -> None:
    h = _token(registry, Role.OPERATOR)
    assert client.post("/v1/groups", json={"name": "g1", "vlan": 10}, headers=h).status_code == 201
    r = client.post(
        "/v1/devices", json={"device_id": "d1", "groups": ["g1"], "risk_class": "high"}, headers=h
    )
    assert r.status_code == 201, r.text
    assert r.json()["groups"] == ["g1"]
    assert client.post("/v1/devices", json={"device_id": "d1"}, headers=h).status_code == 409
    r = client.patch("/v1/devices/d1", json={"firmware_version": "2.0"}, headers=h)
    assert r.json()["firmware_version"] == "2.0" and r.json()["risk_class"] == "high"
    assert client.put("/v1/groups/g1/devices/d1", headers=h).status_code == 204
    assert client.get("/v1/groups/g1", headers=h).json()["device_count"] == 1
    assert client.get("/v1/devices?group=g1", headers=h).json()[0]["device_id"] == "d1"
    assert client.delete("/v1/groups/g1/devices/d1", headers=h).status_code == 204
    assert client.patch("/v1/groups/g1", json={"description": "x"}, headers=h).status_code == 200
    assert client.delete("/v1/devices/d1", headers=h).status_code == 204
    assert client.get("/v1/devices/d1", headers=h).status_code == 404
    assert client.delete("/v1/groups/g1", headers=h).status_code == 204
    events = [p for _, p in registry.pending_events(1000)]
    mutations = [e["api"]["operation"] for e in events if e["status_id"] == 1]
    assert mutations == [
        "token.create",
        "group.create",
        "device.add",
        "device.update",
        "group.member.add",
        "group.member.remove",
        "group.update",
        "device.remove",
        "group.remove",
    ]
    assert events[-1]["actor"]["user"]["name"].startswith("token:")
    assert events[-1]["src_endpoint"]["ip"] == "testclient"


@pytest.mark.parametrize(
    "body",
    [
        {"device_id": "a/b"},
        {"device_id": "x", "vlan": 9000},
        {"device_id": "x", "nonsense": 1},
        {},
    ],
)
def test_invalid_bodies_are_422(
    client: TestClient, registry: Registry, body: dict[str, object]
) -> None:
    h = _token(registry, Role.OPERATOR)
    r = client.post("/v1/devices", json=body, headers=h)
    assert r.status_code == 422
    assert r.json()["error"] == "ValidationError" and r.json()["problems"]
    assert registry.count_devices() == 0


def test_malformed_json_and_oversized_body(client: TestClient, registry: Registry) -> None:
    h = _token(registry, Role.OPERATOR)
    r = client.post(
        "/v1/devices", content=b"{not json", headers={**h, "content-type": "application/json"}
    )
    assert r.status_code == 422
    big = {"device_id": "x", "attributes": {"blob": "y" * 5000}}
    r = client.post("/v1/devices", json=big, headers=h)
    assert r.status_code == 413 and "limit" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit must hold while streaming
        for _ in range(10):
            yield b"x" * 1000

    r = client.post(
        "/v1/devices", content=chunks(), headers={**h, "content-type": "application/json"}
    )
    assert r.status_code == 413
    assert registry.count_devices() == 0


def test_bulk_import_over_api(client: TestClient, registry: Registry) -> None:
    h = _token(registry, Role.OPERATOR)
    csv_body = "device_id,groups\nd1,a\nd2,a;b\n"
    r = client.post(
        "/v1/devices/import", content=csv_body, headers={**h, "content-type": "text/csv"}
    )
    assert r.status_code == 201, r.text
    assert r.json() == {"devices": 2, "groups_created": 2, "lines": 3}
    r = client.post(
        "/v1/devices/import",
        content='{"device_id": "d3"}\n{"device_id": "d1"}\n',
        headers={**h, "content-type": "application/x-ndjson"},
    )
    assert r.status_code == 422
    assert "line 2" in r.json()["detail"] and "already exists" in r.json()["detail"]
    r = client.post("/v1/devices/import", content="x", headers={**h, "content-type": "text/plain"})
    assert r.status_code == 422 and "content type" in r.json()["detail"]
    # the import limit is larger than the normal one, but still a limit
    r = client.post(
        "/v1/devices/import",
        content=b"device_id\n" + b"a\n" * 600_000,
        headers={**h, "content-type": "text/csv"},
    )
    assert r.status_code == 413
    assert registry.count_devices() == 2


def test_token_management_over_api(client: TestClient, registry: Registry) -> None:
    h = _token(registry, Role.ADMIN)
    r = client.post("/v1/tokens", json={"name": "reader", "role": "auditor"}, headers=h)
    assert r.status_code == 201
    new = r.json()
    reader = {"Authorization": f"Bearer {new['token']}"}
    assert client.get("/v1/devices", headers=reader).status_code == 200
    listed = client.get("/v1/tokens", headers=h).json()
    assert all("token" not in t for t in listed)
    assert client.delete(f"/v1/tokens/{new['id']}", headers=h).json()["revoked_at"]
    r = client.get("/v1/devices", headers=reader)
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert (
        client.post("/v1/tokens", json={"name": "x", "role": "root"}, headers=h).status_code == 422
    )
