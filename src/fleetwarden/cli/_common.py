"""What every command shares: the data directory, the registry, output helpers."""

from __future__ import annotations

import getpass
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel
from rich.console import Console

from fleetwarden.errors import NotInitializedError
from fleetwarden.registry import Actor, Registry
from fleetwarden.settings import Settings, load_settings

console = Console(highlight=False, soft_wrap=True)
JsonFlag = typer.Option(False, "--json", help="Print JSON instead of a table.")


class State:
    data_dir: Path | None = None


def settings(**overrides: Any) -> Settings:
    return load_settings(State.data_dir, **overrides)


def require_init(s: Settings) -> None:
    if not s.config_path.exists():
        raise NotInitializedError(
            f"data directory {s.data_dir} is not initialised; run `fleetwarden init` first "
            "(or pass --data-dir / set FLEETWARDEN_DATA_DIR)"
        )


def open_registry(s: Settings | None = None) -> Registry:
    s = s or settings()
    require_init(s)
    return Registry.open(s.effective_database_url)


@contextmanager
def registry() -> Iterator[Registry]:
    """The registry of the current data directory, closed afterwards."""
    reg = open_registry()
    try:
        yield reg
    finally:
        reg.close()


def cli_actor() -> Actor:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return Actor(name=f"cli:{user}", via="cli")


def print_json(obj: Any) -> None:
    def conv(o: Any) -> Any:
        if isinstance(o, BaseModel):
            return o.model_dump(mode="json")
        if isinstance(o, list):
            return [conv(x) for x in o]
        return o

    typer.echo(json.dumps(conv(obj), indent=2, sort_keys=False))
