"""Audit log failures, mapped by the CLI and API like every fleetwarden error."""

from __future__ import annotations

from fleetwarden.errors import ConflictError, Error, NotFoundError, ValidationError


class AuditLogError(Error):
    """Base of audit log failures."""


class AuditLogDamagedError(AuditLogError):
    """The stored log is inconsistent (rows removed, hashes missing): stop appending."""

    exit_code = 65
    http_status = 409


class CheckpointError(ValidationError):
    """A checkpoint or signed note is malformed, unsigned, or signed by an unknown key."""


class EntryNotFoundError(NotFoundError):
    """No entry with that sequence number or event uid."""


class SigningKeyError(ConflictError):
    """A signing key cannot be loaded or created."""


class ArchiveError(ValidationError):
    """An archive file is malformed or does not verify."""
