"""identity: fewer index writes per issued certificate

Every issued certificate is one row in ``identity_certificates`` and one entry in each
of its indexes. An index on a random key (serial, fingerprints) takes each new entry on
a different page, so in a large registry every such index costs a page write per
certificate, at the commit and again at the WAL checkpoint. Two indexes did no work:

- the UNIQUE constraint on the certificate fingerprint: no query looks a certificate up
  by it, and the DER it hashes contains the serial, which is the primary key, so two
  rows can never share it anyway;
- the index on ``status``: its only reader is the CRL query, which wants the revoked
  rows, a small part of the table; every enrolment also moved an entry in it (the old
  certificate from ``active`` to ``superseded``). A partial index on the revoked rows'
  expiry serves the CRL query and is written only at a revocation.

And one more, for little: the index on ``issuer_key_id``. After an issuing-CA rollover
the CRL query of each issuer goes through the revoked rows' index and filters by
issuer; the one query left that reads every row of an issuer is a retired CA's last
expiry, asked at CRL regeneration while a retired CA is still accepted.

On SQLite ``identity_device_keys`` becomes a WITHOUT ROWID table: one B-tree keyed by
device id instead of a rowid table plus an index on the device id.

Revision ID: 0005_identity_lean_indexes
Revises: 0004_identity_device_status
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_identity_lean_indexes"
down_revision = "0004_identity_device_status"
branch_labels = None
depends_on = None

_REVOKED = sa.text("status = 'revoked'")


def upgrade() -> None:
    with op.batch_alter_table("identity_certificates") as batch:
        batch.drop_constraint("uq_identity_certificates_fingerprint_sha256", type_="unique")
    op.drop_index("ix_identity_certificates_status", "identity_certificates")
    op.drop_index("ix_identity_certificates_issuer_key_id", "identity_certificates")
    op.create_index(
        "ix_identity_certificates_revoked",
        "identity_certificates",
        ["not_after"],
        sqlite_where=_REVOKED,
        postgresql_where=_REVOKED,
    )
    _device_keys_rowid(False)


def downgrade() -> None:
    _device_keys_rowid(True)
    op.drop_index("ix_identity_certificates_revoked", "identity_certificates")
    op.create_index(
        "ix_identity_certificates_issuer_key_id", "identity_certificates", ["issuer_key_id"]
    )
    op.create_index("ix_identity_certificates_status", "identity_certificates", ["status"])
    with op.batch_alter_table("identity_certificates") as batch:
        batch.create_unique_constraint(
            "uq_identity_certificates_fingerprint_sha256", ["fingerprint_sha256"]
        )


def _device_keys_rowid(with_rowid: bool) -> None:
    """Rebuild ``identity_device_keys`` with or without a rowid (SQLite only: the table
    is copied into a new one and renamed, as SQLite cannot alter this in place)."""
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "identity_device_keys", recreate="always", table_kwargs={"sqlite_with_rowid": with_rowid}
    ):
        pass
