"""The one exception tree of fleetwarden.

Every expected failure (bad input, missing evidence, refused certificate, unreachable
database) is a subclass of :class:`Error`. The CLI maps them to one readable line and an
exit code in one place (``fleetwarden.cli._errors``); the API maps them to HTTP statuses
(``fleetwarden.api.app``). Anything that is not an ``Error`` is a bug and may show a
traceback.

Third-party exceptions are mapped at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations


class Error(Exception):
    """Base of every expected fleetwarden failure."""

    #: process exit code used by the CLI
    exit_code: int = 1
    #: HTTP status used by the API
    http_status: int = 400

    def diagnostics(self) -> str:
        """A human-readable explanation, safe to print (never contains secrets)."""
        return str(self)


class ConfigError(Error):
    """The settings or the data directory are invalid."""

    exit_code = 78  # EX_CONFIG


class NotInitializedError(ConfigError):
    """The data directory has not been initialised with ``fleetwarden init``."""


class DatabaseUnavailableError(Error):
    """The database cannot be reached or opened."""

    exit_code = 69  # EX_UNAVAILABLE
    http_status = 503


class ValidationError(Error):
    """Input from outside failed validation."""

    exit_code = 65  # EX_DATAERR
    http_status = 422


class NotFoundError(Error):
    """A named object does not exist."""

    exit_code = 66  # EX_NOINPUT
    http_status = 404


class ConflictError(Error):
    """The object already exists or the change conflicts with current state."""

    exit_code = 73  # EX_CANTCREAT
    http_status = 409


class AuthError(Error):
    """Missing, unknown, expired or revoked credentials."""

    exit_code = 77  # EX_NOPERM
    http_status = 401


class PermissionDeniedError(AuthError):
    """Valid credentials without the role the operation needs."""

    http_status = 403


class TooLargeError(ValidationError):
    """Input exceeds a configured size limit."""

    http_status = 413


class ImportRejectedError(ValidationError):
    """A bulk import file had errors; nothing from it was written."""

    def __init__(self, problems: list[tuple[int, str]], *, truncated: bool = False) -> None:
        self.problems = problems
        self.truncated = truncated
        first = problems[0] if problems else (0, "unknown error")
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"import rejected, nothing written: line {first[0]}: {first[1]}{more}")

    def diagnostics(self) -> str:
        lines = [f"import rejected, nothing written ({len(self.problems)} problem(s)):"]
        lines += [f"  line {n}: {reason}" for n, reason in self.problems]
        if self.truncated:
            lines.append("  (stopped listing after the first problems)")
        return "\n".join(lines)
