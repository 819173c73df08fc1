"""The migrations build exactly the schema the models declare, and the identity index
migration (0005) keeps every row and can be undone; on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, Engine, inspect, text

import fleetwarden.detect.models
import fleetwarden.firmware.models
import fleetwarden.identity.models  # noqa: F401 (every table the models declare)
from fleetwarden.registry.db import _alembic_config, create_db_engine
from fleetwarden.registry.models import Base


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine on an empty database (a new SQLite file, a new PostgreSQL schema)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'm.db'}"
    else:
        url = str(request.getfixturevalue("empty_pg_url"))
    engine = create_db_engine(url)
    yield engine
    engine.dispose()


def test_migrated_schema_matches_the_models(empty_engine: Engine) -> None:
    command.upgrade(_alembic_config(empty_engine), "heads")
    with empty_engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def _indexes(engine: Engine) -> dict[str, tuple[list[str], bool]]:
    insp = inspect(engine)
    out = {
        ix["name"]: (list(ix["column_names"]), bool(ix["unique"]))
        for ix in insp.get_indexes("identity_certificates")
    }
    for uq in insp.get_unique_constraints("identity_certificates"):
        out[uq["name"]] = (list(uq["column_names"]), True)
    return out


def _row(serial: str, status: str, days: int) -> dict[str, object]:
    now = datetime.now(UTC)
    return {
        "serial": serial,
        "kind": "device",
        "device_id": "d1",
        "subject": "CN=d1",
        "fingerprint_sha256": serial.rjust(64, "0"),
        "public_key_sha256": serial.rjust(64, "1"),
        "key_type": "ec-p256",
        "not_before": now,
        "not_after": now + timedelta(days=days),
        "status": status,
        "issued_at": now,
        "issued_via": "provision",
        "revoked_at": now if status == "revoked" else None,
        "der": b"\x30\x00",
    }


_INSERT = text(
    "INSERT INTO identity_certificates (serial, kind, device_id, subject, "
    "fingerprint_sha256, public_key_sha256, key_type, not_before, not_after, status, "
    "issued_at, issued_via, revoked_at, der) VALUES (:serial, :kind, :device_id, "
    ":subject, :fingerprint_sha256, :public_key_sha256, :key_type, :not_before, "
    ":not_after, :status, :issued_at, :issued_via, :revoked_at, :der)"
)


def test_lean_identity_indexes_keep_rows_and_downgrade(empty_engine: Engine) -> None:
    cfg = _alembic_config(empty_engine)
    command.upgrade(cfg, "0004_identity_device_status")
    before = _indexes(empty_engine)
    assert before["uq_identity_certificates_fingerprint_sha256"] == (
        ["fingerprint_sha256"],
        True,
    )
    assert "ix_identity_certificates_status" in before
    assert "ix_identity_certificates_issuer_key_id" in before
    with empty_engine.begin() as conn:
        conn.execute(_DEVICE)
        conn.execute(_KEY)
        conn.execute(
            _INSERT,
            [_row("a1", "active", 30), _row("b2", "revoked", 30), _row("c3", "revoked", -1)],
        )

    command.upgrade(cfg, "heads")
    after = _indexes(empty_engine)
    assert "uq_identity_certificates_fingerprint_sha256" not in after
    assert "ix_identity_certificates_status" not in after
    assert "ix_identity_certificates_issuer_key_id" not in after
    assert after["ix_identity_certificates_revoked"] == (["not_after"], False)
    # the indexes the issuance look-ups need are still there
    assert after["ix_identity_certificates_public_key_sha256"] == (["public_key_sha256"], False)
    assert after["ix_identity_certificates_device_status"] == (["device_id", "status"], False)
    with empty_engine.connect() as conn:
        rows = conn.execute(
            text("SELECT serial, status, der FROM identity_certificates ORDER BY serial")
        ).all()
        assert [(r[0], r[1], bytes(r[2])) for r in rows] == [
            ("a1", "active", b"\x30\x00"),
            ("b2", "revoked", b"\x30\x00"),
            ("c3", "revoked", b"\x30\x00"),
        ]
        assert conn.execute(
            text("SELECT device_id, rotations, current_serial FROM identity_device_keys")
        ).all() == [("d1", 2, "a1")]
        # the CRL's query is served by the partial index (SQLite says so in its plan),
        # and the key records are one B-tree
        if empty_engine.dialect.name == "sqlite":
            assert _without_rowid(conn)
            plan = conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN SELECT serial FROM identity_certificates "
                "WHERE status = 'revoked' AND not_after > ?",
                (datetime.now(UTC).isoformat(),),
            ).all()
            assert "ix_identity_certificates_revoked" in str(plan)

    command.downgrade(cfg, "0004_identity_device_status")
    assert _indexes(empty_engine) == before
    with empty_engine.connect() as conn:
        n = conn.execute(text("SELECT count(*) FROM identity_certificates")).scalar_one()
        keys = conn.execute(text("SELECT device_id FROM identity_device_keys")).all()
        if empty_engine.dialect.name == "sqlite":
            assert not _without_rowid(conn)
    assert n == 3 and keys == [("d1",)]


def _without_rowid(conn: Connection) -> bool:
    sql = conn.execute(
        text("SELECT sql FROM sqlite_master WHERE name = 'identity_device_keys'")
    ).scalar_one()
    return "WITHOUT ROWID" in str(sql)


_DEVICE = text(
    "INSERT INTO devices (id, risk_class, key_storage, ip_fixed, allowed_cidrs, status, "
    "attributes, created_at, updated_at) VALUES ('d1', 'medium', 'unknown', false, '[]', "
    "'active', '{}', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
)
_KEY = text(
    "INSERT INTO identity_device_keys (device_id, public_key_sha256, key_type, "
    "key_first_certified_at, rotations, current_serial) VALUES ('d1', 'ff', 'ec-p256', "
    "CURRENT_TIMESTAMP, 2, 'a1')"
)
