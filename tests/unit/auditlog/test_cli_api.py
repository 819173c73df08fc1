"""`fleetwarden log ...` and /v1/auditlog: read, prove (checked by the standalone
verifier), verify (exit codes, first bad index), checkpoint, export, archive."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from auditlog_helpers import events, sql
from fastapi.testclient import TestClient

from fleetwarden.api import create_app
from fleetwarden.auditlog.service import open_log
from fleetwarden.cli import main
from fleetwarden.registry import Actor, Registry
from fleetwarden.registry.schemas import Role, TokenCreate
from fleetwarden.settings import load_settings

STANDALONE = Path(__file__).parents[3] / "src" / "fleetwarden" / "auditlog" / "standalone_verify.py"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def filled(capsys: pytest.CaptureFixture[str], data_dir: Path) -> Path:
    assert run(capsys, "init")[0] == 0
    log = open_log(load_settings(data_dir).auditlog, data_dir)
    try:
        log.store.append(events(37))  # stands in for the bus consumer in these tests
    finally:
        log.close()
    return data_dir


def test_cli_end_to_end(capsys: pytest.CaptureFixture[str], filled: Path, tmp_path: Path) -> None:
    code, out, err = run(capsys, "log", "checkpoint", "--json")
    assert code == 0, err
    cp = json.loads(out)
    assert cp["size"] == 37 and cp["anchor_failures"] == {}
    # the admin action on the log is itself an event, queued for the bus (and so the log)
    reg = Registry.open(load_settings(filled).effective_database_url)
    try:
        ops = [p["api"]["operation"] for _, p in reg.pending_events(100)]
    finally:
        reg.close()
    assert "log checkpoint" in ops
    anchor = filled / "auditlog-checkpoints.txt"
    assert json.loads(anchor.read_text().splitlines()[-1])["size"] == 37
    code, out, _ = run(capsys, "log", "tail", "-n", "3", "--json")
    assert [e["seq"] for e in json.loads(out)] == [34, 35, 36]
    code, out, _ = run(capsys, "log", "show", "5", "--json")
    assert json.loads(out)["record"]["event"]["message"] == "a device 5"
    code, out, _ = run(capsys, "log", "show", "--uid", "a-6", "--json")
    assert json.loads(out)["seq"] == 6
    assert run(capsys, "log", "show", "99")[0] == 66
    code, out, _ = run(capsys, "log", "verify", "--json")
    assert code == 0 and json.loads(out)["ok"] is True
    key = run(capsys, "log", "checkpoint", "--key")[1].strip()
    # inclusion proof, checked by the standalone verifier with the pinned key
    code, out, _ = run(capsys, "log", "prove", "11", "--json")
    proof = tmp_path / "p.json"
    proof.write_text(out)
    r = subprocess.run(
        [sys.executable, str(STANDALONE), "inclusion", key, str(proof)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout
    # consistency 20 -> 37 (old note from a checkpoint of size 20 is not needed here)
    code, out, _ = run(capsys, "log", "prove", "20", "--size", "37", "--consistency", "--json")
    assert code == 0 and json.loads(out)["old_size"] == 20
    note37 = tmp_path / "n37.txt"
    note37.write_text(cp["note"])
    r = subprocess.run(
        [sys.executable, str(STANDALONE), "checkpoint", key, str(note37)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "size 37" in r.stdout
    # export and archive
    out_file = tmp_path / "x.cef"
    assert run(capsys, "log", "export", "--format", "cef", "--output", str(out_file))[0] == 0
    assert len(out_file.read_text().splitlines()) == 37
    assert run(capsys, "log", "export", "--format", "xml")[0] != 0
    arch = tmp_path / "arch.json"
    assert run(capsys, "log", "archive", "--from", "0", "--to", "20", "--output", str(arch))[0] == 0
    code, out, _ = run(capsys, "log", "verify-archive", str(arch), "--key", key, "--json")
    assert code == 0 and json.loads(out)["end"] == 20
    # damage: verify names the first bad index and exits non-zero
    log = open_log(load_settings(filled).auditlog, filled)
    try:
        sql(log.store, "UPDATE audit_entries SET leaf = :l WHERE seq = 9", l=b'{"forged":true}')
    finally:
        log.close()
    code, out, err = run(capsys, "log", "verify")
    assert code == 65
    assert "first bad index 9: edited" in out and "damaged at index 9" in err
    assert "Traceback" not in err


def test_cli_refuses_bad_checkpoint_file(
    capsys: pytest.CaptureFixture[str], filled: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("not a note")
    code, _, err = run(capsys, "log", "verify", "--checkpoint", str(bad))
    assert code == 65 and "neither a signed note" in err


@pytest.fixture
def client(registry: Registry, tmp_path: Path) -> Iterator[tuple[TestClient, Path]]:
    settings = load_settings(tmp_path)
    log = open_log(settings.auditlog, tmp_path)
    log.store.append(events(12))
    log.checkpointer.make()
    log.close()
    with TestClient(create_app(settings, registry)) as c:
        yield c, tmp_path


def _token(registry: Registry, role: Role) -> dict[str, str]:
    tok = registry.create_token(TokenCreate(name=f"t-{role.value}", role=role), Actor("test"))
    return {"Authorization": f"Bearer {tok.token}"}


def test_api_routes(client: tuple[TestClient, Path], registry: Registry) -> None:
    c, _ = client
    assert c.get("/v1/auditlog").status_code == 401
    aud = _token(registry, Role.AUDITOR)
    head = c.get("/v1/auditlog", headers=aud).json()
    assert head["size"] == 12 and head["checkpoint"].split("\n")[1] == "12"
    assert [
        e["seq"] for e in c.get("/v1/auditlog/entries?start=3&limit=2", headers=aud).json()
    ] == [3, 4]
    assert c.get("/v1/auditlog/entries/99", headers=aud).status_code == 404
    assert c.get("/v1/auditlog/entries?limit=5000", headers=aud).status_code == 422
    p = c.get("/v1/auditlog/proof/inclusion?seq=4", headers=aud).json()
    assert p["tree_size"] == 12 and len(p["inclusion_proof"]) == 4
    assert c.get("/v1/auditlog/proof/consistency?old=5", headers=aud).json()["new_size"] == 12
    assert c.get("/v1/auditlog/proof/consistency?old=50", headers=aud).status_code == 404
    assert c.get("/v1/auditlog/checkpoint", headers=aud).text.startswith(head["origin"])
    # auditors read; only admins make checkpoints or run a full verification
    assert c.post("/v1/auditlog/verify", headers=aud).status_code == 403
    adm = _token(registry, Role.ADMIN)
    assert c.post("/v1/auditlog/verify", headers=adm).json()["ok"] is True
    assert c.post("/v1/auditlog/checkpoint", headers=adm).status_code == 200
