"""Audit log test fixtures: an empty store on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from auditlog_helpers import sql

from fleetwarden.auditlog.store import AuditStore


@pytest.fixture
def store(db_url: str) -> Iterator[AuditStore]:
    s = AuditStore.open(db_url)
    for t in ("audit_entries", "audit_nodes", "audit_checkpoints", "audit_meta"):
        sql(s, f"DELETE FROM {t}")
    sql(s, "INSERT INTO audit_meta (key, value) VALUES ('format', '1')")
    yield s
    s.close()
