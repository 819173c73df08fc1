"""Multi-row INSERTs for the issuance path without per-row ORM or bind-processing cost.

The ORM (and even a Core ``insert()`` executed with a list of dicts) spends most of its
time per value in Python: building the parameter dicts, running each column's bind
processor (datetime to text on SQLite, JSON encoding) and compiling. For the issuance
path that was more time than signing the certificate. :class:`RowInserter` compiles the
INSERT once per dialect, converts values with the column types' *own* bind processors
(so what lands in the database is what the ORM would store: the same text for a
datetime on SQLite, the same driver objects on PostgreSQL; JSON text is produced by
orjson where the column type would produce text with the standard library, with
identical content; values that repeat in consecutive rows, like the batch's timestamps,
are converted once) and hands
the rows to the driver's ``executemany`` in the caller's transaction.

Nothing here commits: the rows become visible with the caller's transaction or not at
all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import JSON, Connection, Table, insert


class RowInserter:
    """``INSERT INTO table (columns...) VALUES (...)`` for many rows at once."""

    def __init__(self, table: Table, columns: Sequence[str]) -> None:
        self.table = table
        self.columns = list(columns)
        missing = [c for c in self.columns if c not in table.c]
        if missing:
            raise ValueError(f"{table.name} has no column(s) {missing}")
        self._compiled: dict[str, _Plan] = {}

    def _plan(self, conn: Connection) -> _Plan:
        dialect = conn.dialect
        key = f"{dialect.name}:{dialect.driver}:{dialect.paramstyle}"
        plan = self._compiled.get(key)
        if plan is None:
            compiled = insert(self.table).compile(dialect=dialect, column_keys=self.columns)
            convert: list[tuple[int, Callable[[Any], Any]]] = []
            for i, c in enumerate(self.columns):
                ctype = self.table.c[c].type
                proc: Callable[[Any], Any] | None = ctype.dialect_impl(dialect).bind_processor(
                    dialect
                )
                if isinstance(ctype, JSON) and proc is not None and isinstance(proc({}), str):
                    proc = _fast_json(proc)
                if proc is not None:
                    convert.append((i, proc))
            reorder: list[int] | None = None
            if compiled.positional:
                index = {c: i for i, c in enumerate(self.columns)}
                positions = [index[n] for n in compiled.positiontup or []]
                if positions != list(range(len(self.columns))):
                    reorder = positions
            plan = _Plan(compiled.string, not compiled.positional, reorder, convert)
            self._compiled[key] = plan
        return plan

    def execute(self, conn: Connection, rows: Sequence[Sequence[Any]]) -> None:
        """Insert ``rows`` (each a sequence of values in ``columns`` order)."""
        if not rows:
            return
        plan = self._plan(conn)
        width = len(self.columns)
        convert = plan.convert
        last_in: list[Any] = [object()] * width
        last_out: list[Any] = [None] * width
        converted: list[tuple[Any, ...]] = []
        for row in rows:
            if len(row) != width:
                raise ValueError(f"row has {len(row)} values, {self.table.name} needs {width}")
            if not convert:
                converted.append(row if type(row) is tuple else tuple(row))
                continue
            out = list(row)
            for i, proc in convert:
                value = out[i]
                if value is None:
                    continue
                if value is last_in[i] or (type(value) is datetime and value == last_in[i]):
                    out[i] = last_out[i]
                else:
                    out[i] = last_out[i] = proc(value)
                    last_in[i] = value
            converted.append(tuple(out))  # SQLAlchemy takes rows as tuples or dicts
        params: Sequence[Any] = converted
        if plan.named:
            params = [dict(zip(self.columns, r, strict=True)) for r in converted]
        elif plan.reorder is not None:
            params = [tuple(r[i] for i in plan.reorder) for r in converted]
        conn.exec_driver_sql(plan.sql, params)


@dataclass(frozen=True, slots=True)
class _Plan:
    """An INSERT compiled for one dialect and how rows are turned into its parameters."""

    sql: str
    named: bool  # parameters by name (a dict per row), else by position
    #: positions of ``columns`` in the statement's parameter order; None when the same
    reorder: list[int] | None
    #: (column index, the column type's bind processor) for columns that convert values
    convert: list[tuple[int, Callable[[Any], Any]]]


def _fast_json(native: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """JSON text through orjson (several times faster than the standard library, which
    SQLAlchemy uses; any reader parses both the same); the column type's own processor
    for values orjson refuses."""

    def process(value: Any) -> Any:
        try:
            return orjson.dumps(value).decode()
        except (orjson.JSONEncodeError, TypeError):
            return native(value)

    return process
