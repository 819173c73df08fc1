"""Errors of the detection subsystem (control C9)."""

from __future__ import annotations

from fleetwarden.errors import ConflictError, Error, NotFoundError, ValidationError


class DetectError(Error):
    """Base of detection failures."""


class MetricRejectedError(ValidationError):
    """A metric datapoint failed validation; ``reason`` is a short stable code."""

    def __init__(self, reason: str, detail: str, *, device_id: str | None = None) -> None:
        self.reason = reason
        self.device_id = device_id
        super().__init__(f"metric rejected ({reason}): {detail}")


class RuleError(ValidationError):
    """A rule definition is invalid."""


class AlertNotFoundError(NotFoundError):
    """No alert with that id."""


class AlertStateError(ConflictError):
    """The alert's lifecycle does not allow that transition."""


class MitigationNotWiredError(DetectError):
    """A mitigation whose mechanism lives in another control that is not merged yet."""

    exit_code = 69
    http_status = 501
