"""The CLI: commands, --json, one-line errors with exit codes, never a traceback."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from fleetwarden.cli import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for cmd in ("init", "up", "device", "group", "token", "version"):
        assert cmd in out
    code, out, _ = run(capsys, "device", "--help")
    for cmd in ("add", "list", "show", "remove", "import"):
        assert cmd in out


def test_not_initialised(capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
    code, out, err = run(capsys, "device", "list")
    assert code == 78
    assert "fleetwarden init" in err and "Traceback" not in err


def test_init_is_idempotent_and_private(capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
    code, out, _ = run(capsys, "init", "--json")
    assert code == 0
    first = json.loads(out)
    assert first["admin_token"].startswith("fwt_")
    assert stat.S_IMODE(os.stat(data_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(data_dir / "fleetwarden.toml").st_mode) == 0o600
    code, out, _ = run(capsys, "init", "--json")
    assert json.loads(out)["admin_token"] is None  # never a second token silently


def test_device_group_token_flow(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    run(capsys, "init")
    assert run(capsys, "group", "create", "meters", "--cidr", "10.0.0.0/8")[0] == 0
    code, out, err = run(capsys, "device", "add", "m1", "--group", "meters", "--risk-class", "high")
    assert code == 0, err
    code, out, _ = run(capsys, "device", "show", "m1", "--json")
    assert json.loads(out)["groups"] == ["meters"]
    code, _, err = run(capsys, "device", "add", "m1")
    assert code == 73 and "already exists" in err
    code, _, err = run(capsys, "device", "add", "m/2")
    assert code == 65 and "device id" in err
    code, _, err = run(capsys, "device", "show", "ghost")
    assert code == 66 and "unknown device" in err
    f = tmp_path / "fleet.csv"
    f.write_text("device_id,groups\nn1,meters\nn2,\n")
    code, out, _ = run(capsys, "device", "import", str(f), "--json")
    assert json.loads(out)["devices"] == 2
    code, out, _ = run(capsys, "device", "list", "--json", "--group", "meters")
    assert [d["device_id"] for d in json.loads(out)] == ["m1", "n1"]
    bad = tmp_path / "bad.csv"
    bad.write_text("device_id\nz1\nz1\n")
    code, _, err = run(capsys, "device", "import", str(bad))
    assert code == 65 and "line 3" in err and "nothing written" in err
    code, _, err = run(capsys, "device", "import", str(tmp_path / "missing.csv"))
    assert code == 65 and "cannot read" in err
    code, out, _ = run(capsys, "token", "create", "--name", "ci", "--role", "auditor")
    token = out.strip()
    assert token.startswith("fwt_") and "\n" not in token
    code, out, _ = run(capsys, "token", "list", "--json")
    tokens = json.loads(out)
    assert {t["name"] for t in tokens} == {"initial-admin", "ci"}
    assert token not in out
    tid = token.split("_")[1]
    assert run(capsys, "token", "revoke", tid)[0] == 0
    code, _, err = run(capsys, "token", "create", "--name", "x", "--role", "god")
    assert code == 65
    assert run(capsys, "device", "remove", "m1", "--yes")[0] == 0
    assert run(capsys, "group", "list", "--json")[0] == 0


def test_unreachable_postgres_is_one_line(
    capsys: pytest.CaptureFixture[str], data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(capsys, "init")
    monkeypatch.setenv("FLEETWARDEN_DATABASE_URL", "postgresql://fw:secretpw@127.0.0.1:1/fleet")
    code, out, err = run(capsys, "device", "list")
    assert code == 69
    assert "cannot reach the database" in err
    assert "secretpw" not in err and "Traceback" not in err
    monkeypatch.setenv("FLEETWARDEN_DATABASE_URL", "notaurl")
    code, _, err = run(capsys, "device", "list")
    assert code == 78 and "database URL" in err


def test_init_creates_the_fleet_ca_once(capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
    code, out, err = run(capsys, "init", "--json")
    assert code == 0, err
    info = json.loads(out)
    ident = data_dir / "identity"
    assert info["ca"]["root"] == str(ident / "root.crt")
    assert (ident / "issuing.crt").exists() and (ident / "crl" / "all.crl.pem").exists()
    # file backend, no passphrase configured: generated and kept 0600 (as `ca init` does)
    assert stat.S_IMODE(os.stat(ident / "ca.pass").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(ident / "issuing.key").st_mode) == 0o600
    before = (ident / "issuing.crt").read_bytes()
    code, out, _ = run(capsys, "init", "--json")
    assert code == 0 and json.loads(out)["ca"] is None  # exists: left alone
    assert (ident / "issuing.crt").read_bytes() == before
    code, _, err = run(capsys, "ca", "init")
    assert code == 73 and "already exists" in err


def test_init_no_ca_then_ca_init(capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
    code, out, _ = run(capsys, "init", "--no-ca")
    assert code == 0 and "admin API token" in out and "fleet CA" not in out
    assert not (data_dir / "identity").exists()
    assert run(capsys, "ca", "init")[0] == 0


def test_init_keeps_the_admin_token_when_the_ca_fails(
    capsys: pytest.CaptureFixture[str], data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETWARDEN_IDENTITY__KEY_BACKEND", "pkcs11")
    monkeypatch.setenv("FLEETWARDEN_IDENTITY__PKCS11_MODULE", str(data_dir / "nope.so"))
    code, out, err = run(capsys, "init")
    assert code == 69, err
    assert "admin API token" in out and "fwt_" in out  # printed before the CA failed
    assert "fleetwarden ca init" in out and "Traceback" not in out + err


def test_ca_rollover_cli(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    assert run(capsys, "init")[0] == 0
    usb = tmp_path / "usb"
    assert run(capsys, "ca", "export-root", "--out", str(usb), "--remove")[0] == 0
    code, _, err = run(capsys, "ca", "rollover")
    assert code == 69 and "--root-dir" in err and "Traceback" not in err
    code, out, err = run(capsys, "ca", "rollover", "--root-dir", str(usb), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["generation"] == 2 and summary["retired"]["generation"] == 1
    assert summary["issuing"]["crl_url"].endswith("/crl/issuing-2.crl")
    code, out, err = run(capsys, "ca", "rollover", "--root-dir", str(usb), "--days", "20")
    assert code == 2  # below the minimum lifetime: refused by the option check
    code, out, err = run(capsys, "ca", "rollover", "--root-dir", str(usb))
    assert code == 0, err
    assert "generation 2 -> 3" in out and "take it offline again" in out
    code, out, err = run(capsys, "ca", "root-crl", "--root-dir", str(usb))
    assert code == 0 and "root CRL written" in out, err
    code, _, err = run(capsys, "ca", "root-crl")
    assert code == 69 and "--root-dir" in err


def test_ca_rollover_refuses_a_root_expiring_first(
    capsys: pytest.CaptureFixture[str], data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETWARDEN_IDENTITY__ROOT_LIFETIME_DAYS", "90")
    assert run(capsys, "init")[0] == 0
    code, _, err = run(capsys, "ca", "rollover")
    assert code == 73 and "roll the root over" in err and "--days" in err
    code, out, err = run(capsys, "ca", "rollover", "--days", "60", "--json")
    assert code == 0, err
