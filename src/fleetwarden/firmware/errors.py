"""Errors of the firmware control (C6 signed firmware, C5 signing keys).

Split by what the caller can do: an image that is not acceptable (bad format, bad
signature, unknown key, downgrade) is an :class:`ImageRejectedError`; a key that cannot
be loaded or used is a :class:`SigningKeyError`; rollout state conflicts are
:class:`RolloutError`.
"""

from __future__ import annotations

from fleetwarden.errors import ConflictError, Error, ValidationError


class FirmwareError(Error):
    """Base of every firmware failure."""


class ImageRejectedError(FirmwareError, ValidationError):
    """The image is malformed, tampered, unsigned, signed by an unknown key or refused."""


class DowngradeError(ImageRejectedError, ConflictError):
    """Version or security counter not higher than the newest release (anti-rollback)."""

    http_status = 409
    exit_code = 65


class SigningKeyError(FirmwareError):
    """A signing key cannot be loaded, unlocked or used."""

    exit_code = 77


class RolloutError(FirmwareError, ConflictError):
    """A rollout transition that is not allowed from the current state."""


class RepositoryError(FirmwareError):
    """The TUF repository cannot be built, loaded or signed."""

    exit_code = 70
    http_status = 500
