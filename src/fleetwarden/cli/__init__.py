"""The ``fleetwarden`` command line: a thin layer wiring flags to the public API.

Expected failures (``fleetwarden.errors.Error``) become one line on stderr and the
error's exit code, in :func:`main` only; no command prints a traceback for them.
"""

from __future__ import annotations

import sys

from fleetwarden.cli._app import app
from fleetwarden.errors import Error


def main(argv: list[str] | None = None) -> None:
    from rich.console import Console

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        # standalone mode: usage errors and aborts are handled by the CLI framework
        app(args=argv, prog_name="fleetwarden")
    except Error as exc:
        err.print(f"[bold red]error:[/] {exc.diagnostics()}", markup=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


__all__ = ["app", "main"]
