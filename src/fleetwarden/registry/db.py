"""Opening the registry database: engine setup, SQLite pragmas, schema migrations.

SQLite runs in WAL mode with foreign keys on and a busy timeout, so the API, the CLI and
background workers can share the file. PostgreSQL is chosen by URL. Either way the
schema is brought to the newest Alembic revision before use.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, event, inspect, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError

from fleetwarden.errors import ConfigError, DatabaseUnavailableError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
#: SQLite page cache per connection (KiB) and memory-map size (see ``_sqlite_pragmas``)
SQLITE_CACHE_KIB = 64 * 1024
SQLITE_MMAP_BYTES = 256 * 1024 * 1024
#: WAL pages after which a committing connection checkpoints by itself: a backstop, the
#: :class:`WalCheckpointer` normally copies the WAL long before (about 160 MiB)
SQLITE_CHECKPOINT_PAGES = 40_000
#: seconds between the background checkpoints of :class:`WalCheckpointer`
SQLITE_CHECKPOINT_INTERVAL = 1.0
# Alembic logs plugin set-up and each step at INFO; nobody running the service needs it.
logging.getLogger("alembic").setLevel(logging.WARNING)
log = logging.getLogger(__name__)


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
    # Sized for a registry of a large fleet rather than SQLite's defaults (a 2 MiB page
    # cache, a checkpoint every 4 MiB of WAL, run by whichever commit crosses it).
    # Issuance writes entries into indexes on random keys (key fingerprints), each on
    # a different page: with the default cache those pages were read from the file
    # again for every batch, and the commits' checkpoints copied them back out; per
    # certificate that grew from 10 to 50 µs over the first 40,000 certificates
    # (docs/benchmarks.md). Reads go through a memory map; the cache is a ceiling per
    # connection, not an allocation. Checkpoints run on a thread of their own
    # (WalCheckpointer); the commit-time one is only a backstop.
    cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
    cur.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
    cur.execute(f"PRAGMA wal_autocheckpoint={SQLITE_CHECKPOINT_PAGES}")
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


class WalCheckpointer:
    """Copies a SQLite registry's write-ahead log into the database file on a thread of
    its own: SQLite's "application-initiated checkpoints" (https://sqlite.org/wal.html).

    Left to SQLite, the commit that crosses ``wal_autocheckpoint`` pages runs the
    checkpoint itself: an issuance batch then waited 50-120 ms for thousands of pages
    to be copied and the file synced. Here a PASSIVE checkpoint runs every
    ``interval`` seconds on a separate connection; it never blocks writers or readers
    (it copies what no reader still needs, up to the log's end when it started), and
    the ``sqlite3`` module releases the GIL while SQLite works. Under continuous writes
    the log can only restart from its beginning when a checkpoint has caught up; the
    committing connections' own automatic checkpoint, set far higher
    (``SQLITE_CHECKPOINT_PAGES``), then finds almost nothing left to copy.

    A failed checkpoint (the disk is full, the file unreadable) is logged once per
    streak and retried at the next interval; it loses nothing, the frames stay in the
    log. When the database file is gone the thread ends.
    """

    def __init__(self, path: str, interval: float = SQLITE_CHECKPOINT_INTERVAL) -> None:
        self.path = str(Path(path).resolve())
        # an existing file only (mode=rw): a checkpoint must never create an empty one
        self._uri = f"file:{quote(self.path)}?mode=rw"
        self.interval = interval
        self.last: tuple[int, int, int] | None = None  # (busy, log frames, copied frames)
        self.failures = 0
        self._streak = 0  # failures since the last checkpoint that worked
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._run, name=f"wal-checkpoint:{Path(path).name}", daemon=True
        )

    @classmethod
    def for_engine(cls, engine: Engine) -> WalCheckpointer | None:
        """A started checkpointer for ``engine``'s database file (None unless SQLite on
        a file)."""
        if engine.dialect.name != "sqlite":
            return None
        db = engine.url.database
        if not db or db == ":memory:" or db.startswith("file:"):
            return None
        cp = cls(db)
        cp._thread.start()
        return cp

    def checkpoint(self) -> tuple[int, int, int] | None:
        """One PASSIVE checkpoint now; None when it failed (logged). Each runs on a
        connection of its own, closed at once: no handle is held between checkpoints
        (nor carried into a forked child)."""
        with self._lock:
            if self._stop.is_set():
                return None
            try:
                conn = sqlite3.connect(self._uri, uri=True)
                try:
                    row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                finally:
                    conn.close()
            except sqlite3.Error as exc:
                self.failures += 1
                self._streak += 1
                # once per streak of failures, not once a second
                level = logging.WARNING if self._streak == 1 else logging.DEBUG
                log.log(level, "WAL checkpoint of %s failed: %s", self.path, exc)
                return None
            if self._streak:
                log.info("WAL checkpoint of %s works again", self.path)
                self._streak = 0
            self.last = (int(row[0]), int(row[1]), int(row[2]))
            return self.last

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not os.path.exists(self.path):
                return  # the database is gone: nothing is left to checkpoint
            self.checkpoint()

    def close(self) -> None:
        """Stop the thread (after a checkpoint in progress)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()
