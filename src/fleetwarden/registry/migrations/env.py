"""Alembic environment: runs against the engine fleetwarden hands over (never a URL in
an ini file), so the same migrations serve SQLite and PostgreSQL."""

from __future__ import annotations

from alembic import context

from fleetwarden.registry.models import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    engine = config.attributes.get("engine")
    if engine is None:
        raise RuntimeError("fleetwarden migrations run only through fleetwarden.registry.db")
    with engine.begin() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()


run()
