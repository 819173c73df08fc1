"""API routes and CLI commands of detection: alerts lifecycle, suppressions, rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fleetwarden.api import create_app
from fleetwarden.cli import main
from fleetwarden.detect.alerts import AlertStore
from fleetwarden.detect.engine import Signal
from fleetwarden.detect.rules import AlertSeverity
from fleetwarden.registry import Actor, Registry
from fleetwarden.registry.schemas import Role, TokenCreate
from fleetwarden.settings import load_settings


def _sig(dev: str = "d1") -> Signal:
    return Signal("alarm", dev, "rule:auth", 1_800_000_000, AlertSeverity.HIGH, "auth", {"v": 1})


def _h(registry: Registry, role: Role) -> dict[str, str]:
    tok = registry.create_token(TokenCreate(name=f"t-{role.value}", role=role), Actor("t"))
    return {"Authorization": f"Bearer {tok.token}"}


def test_alert_routes(registry: Registry, tmp_path: Path) -> None:
    app = create_app(load_settings(tmp_path), registry)
    a = AlertStore(registry).apply(_sig())
    assert a is not None
    aud, op = _h(registry, Role.AUDITOR), _h(registry, Role.OPERATOR)
    with TestClient(app) as c:
        assert c.get("/v1/alerts").status_code == 401
        assert [x["id"] for x in c.get("/v1/alerts", headers=aud).json()] == [a.id]
        assert c.get("/v1/alerts?status=resolved", headers=aud).json() == []
        assert c.get(f"/v1/alerts/{a.id}", headers=aud).json()["severity"] == "high"
        assert c.get("/v1/alerts/nope", headers=aud).status_code == 404
        assert c.post(f"/v1/alerts/{a.id}/ack", headers=aud).status_code == 403
        assert c.post(f"/v1/alerts/{a.id}/ack", headers=op).json()["status"] == "acknowledged"
        assert c.post(f"/v1/alerts/{a.id}/ack", headers=op).status_code == 409
        r = c.post(
            f"/v1/alerts/{a.id}/resolve",
            headers=op,
            json={"verification": "false_positive", "note": "test"},
        )
        assert r.json()["verification"] == "false_positive"
        bad = c.post(f"/v1/alerts/{a.id}/verify", headers=op, json={"verification": "maybe"})
        assert bad.status_code == 422
        s = c.post(
            "/v1/alerts/suppressions",
            headers=op,
            json={"device_id": "d1", "minutes": 30, "reason": "maintenance"},
        )
        assert s.status_code == 201
        assert len(c.get("/v1/alerts/suppressions", headers=aud).json()) == 1
        too_long = c.post(
            "/v1/alerts/suppressions",
            headers=op,
            json={"device_id": "d1", "minutes": 10**9, "reason": "x"},
        )
        assert too_long.status_code == 422
        # rules through the API
        rule = {"name": "auth", "metric": "auth_failures", "comparison": "less-than", "value": 5}
        assert c.put("/v1/detect/rules/auth", headers=op, json=rule).status_code == 200
        assert c.put("/v1/detect/rules/other", headers=op, json=rule).status_code == 422
        broken = {**rule, "comparison": "between"}
        assert c.put("/v1/detect/rules/auth", headers=op, json=broken).status_code == 422
        assert [r["name"] for r in c.get("/v1/detect/rules", headers=aud).json()] == ["auth"]
        assert c.delete("/v1/detect/rules/auth", headers=op).status_code == 204
        # metric intake needs the running service
        assert c.post("/v1/detect/metrics", headers=op, json=[]).status_code == 503
        assert c.get("/v1/detect/status", headers=aud).json() == {"running": False}


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_alerts_cli(capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
    assert run(capsys, "init")[0] == 0
    s = load_settings(data_dir)
    reg = Registry.open(s.effective_database_url)
    a = AlertStore(reg).apply(_sig())
    reg.close()
    assert a is not None
    code, out, _ = run(capsys, "alerts", "list", "--json")
    assert code == 0 and json.loads(out)[0]["id"] == a.id
    code, out, _ = run(capsys, "alerts", "show", a.id[:8])
    assert code == 0 and "rule:auth" in out
    assert run(capsys, "alerts", "ack", a.id)[0] == 0
    code, _, err = run(capsys, "alerts", "ack", a.id)
    assert code == 73 and "Traceback" not in err
    code, out, _ = run(capsys, "alerts", "suppress", a.id, "--minutes", "5", "--reason", "work")
    assert code == 0 and "device=d1 key=rule:auth" in out
    code, out, _ = run(capsys, "alerts", "resolve", a.id, "--verification", "benign")
    assert code == 0 and "benign" in out
    code, _, err = run(capsys, "alerts", "show", "nope")
    assert code == 66
    code, _, err = run(capsys, "alerts", "approve", a.id)
    assert code == 65 and "no mitigation" in err


def test_detect_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "r.yaml"
    f.write_text("rules:\n  - {name: a, metric: auth_failures, comparison: less-than, value: 3}\n")
    code, out, _ = run(capsys, "detect", "check-rules", str(f))
    assert code == 0 and "auth_failures" in out
    f.write_text("rules:\n  - {name: a, metric: nope, comparison: less-than, value: 3}\n")
    code, _, err = run(capsys, "detect", "check-rules", str(f))
    assert code == 65 and "rule #1" in err
    code, _, err = run(capsys, "detect", "evaluate", "--param", "bogus=1,2")
    assert code == 65 and "unknown scenario parameter" in err
    code, out, _ = run(
        capsys,
        "detect",
        "evaluate",
        "--seeds",
        "4",
        "--devices",
        "20",
        "--days",
        "5",
        "--learning-days",
        "3",
        "--instances",
        "1",
        "--no-multivariate",
        "--json",
        "--param",
        "stuffing_failures=50,60",
    )
    res = json.loads(out)
    assert code in (0, 1) and res["scenarios"]["credential_stuffing"]["instances"] == 1
    assert res["fleet"]["scenarios"]["stuffing_failures"] == [50, 60]
