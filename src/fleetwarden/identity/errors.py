"""Identity errors: refused enrolments, CA problems, key backend failures.

Every refusal on the EST path is an :class:`EnrollmentRefused` (or a subclass) whose
message is safe to send to the device and to record in the audit event.
"""

from __future__ import annotations

from fleetwarden.errors import AuthError, ConfigError, Error, ValidationError


class CaNotInitializedError(ConfigError):
    """The fleet CA does not exist yet (run ``fleetwarden ca init``)."""


class KeyBackendError(Error):
    """A key backend (file, PKCS#11 token) failed or is misconfigured."""

    exit_code = 69
    http_status = 503


class EnrollmentRefused(ValidationError):
    """The CSR or the request is unacceptable; nothing was issued."""

    http_status = 400


class EnrollmentAuthError(AuthError):
    """The device did not authenticate (token, factory or current certificate)."""


class EnrollmentForbidden(EnrollmentRefused):
    """Authenticated, but not allowed (another device's name or key, revoked cert)."""

    http_status = 403
