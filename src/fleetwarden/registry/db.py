"""Opening the registry database: engine setup, SQLite pragmas, schema migrations.

SQLite runs in WAL mode with foreign keys on and a busy timeout, so the API, the CLI and
background workers can share the file. PostgreSQL is chosen by URL. Either way the
schema is brought to the newest Alembic revision before use.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError

from fleetwarden.errors import ConfigError, DatabaseUnavailableError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Alembic logs plugin set-up and each step at INFO; nobody running the service needs it.
logging.getLogger("alembic").setLevel(logging.WARNING)


def safe_url(url: str | URL) -> str:
    """The URL with any password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"


def _normalise(url: str) -> URL:
    try:
        u = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"invalid database URL: {safe_url(url)}") from exc
    # Plain postgresql:// means psycopg 3 here (the one driver we ship).
    if u.drivername in {"postgresql", "postgres"}:
        u = u.set(drivername="postgresql+psycopg")
    return u


def create_db_engine(url: str, *, connect_timeout: int = 5) -> Engine:
    """Create an engine and check that the database answers."""
    u = _normalise(url)
    kwargs: dict[str, Any] = {"future": True}
    if u.get_backend_name() == "sqlite":
        db = u.database
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
    elif u.get_backend_name() == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": connect_timeout}
        kwargs["pool_pre_ping"] = True
    try:
        engine = create_engine(u, **kwargs)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise ConfigError(f"unsupported database URL {safe_url(u)}: {exc}") from exc
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except (DBAPIError, SQLAlchemyError, OSError) as exc:
        engine.dispose()
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc) else ""
        raise DatabaseUnavailableError(
            f"cannot reach the database at {safe_url(u)}: {reason}"
        ) from exc
    return engine


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def schema_heads() -> set[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(MIGRATIONS_DIR))
    return set(script.get_heads())


def current_revisions(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return set()
        rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars()
        return set(rows)


def migrate(engine: Engine) -> bool:
    """Upgrade the schema to every head; return True when anything was applied."""
    if current_revisions(engine) == schema_heads():
        return False
    from alembic import command

    command.upgrade(_alembic_config(engine), "heads")
    return True
