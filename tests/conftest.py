"""Shared fixtures: a registry on SQLite and on PostgreSQL, an API client, a data dir.

The PostgreSQL server is the one the machine runs (127.0.0.1:5432, trust auth, database
``test``; override with FLEETWARDEN_TEST_PG_URL). Each test session gets its own schema,
so parallel runs never see each other's rows. Set FLEETWARDEN_TEST_PG=skip to skip the
PostgreSQL half (CI never does).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from fleetwarden.registry import Registry
from fleetwarden.registry.models import Base

PG_URL = os.environ.get(
    "FLEETWARDEN_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@contextmanager
def _pg_schema(prefix: str) -> Iterator[str]:
    """A PostgreSQL URL on a new schema of its own, dropped afterwards."""
    if os.environ.get("FLEETWARDEN_TEST_PG") == "skip":
        pytest.skip("FLEETWARDEN_TEST_PG=skip")
    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="session")
def pg_schema_url() -> Iterator[str]:
    with _pg_schema("fwtest") as url:
        yield url


@pytest.fixture
def empty_pg_url() -> Iterator[str]:
    """A PostgreSQL URL on a new, empty schema of its own: for tests that run the
    migrations themselves."""
    with _pg_schema("fwempty") as url:
        yield url


def _wipe(reg: Registry) -> None:
    with reg.engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    return str(request.getfixturevalue("pg_schema_url"))


@pytest.fixture
def registry(db_url: str) -> Iterator[Registry]:
    reg = Registry.open(db_url)
    _wipe(reg)
    yield reg
    _wipe(reg)
    reg.close()


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "data"
    monkeypatch.setenv("FLEETWARDEN_DATA_DIR", str(d))
    for key in list(os.environ):
        if (
            key.startswith("FLEETWARDEN_")
            and key not in {"FLEETWARDEN_DATA_DIR"}
            and not key.startswith("FLEETWARDEN_TEST")
        ):
            monkeypatch.delenv(key)
    return d
