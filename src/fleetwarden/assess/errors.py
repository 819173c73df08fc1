"""Errors of the assessment: bad bundles, bad suppressions, failed report writes."""

from __future__ import annotations

from fleetwarden.errors import Error, ValidationError


class AssessError(Error):
    """The assessment could not run."""


class EvidenceError(ValidationError):
    """One evidence file is unreadable; collectors catch it and list the file as skipped."""


class CatalogueError(AssessError):
    """A check's metadata is invalid (a bug in the catalogue, caught at import time)."""


class ReportError(AssessError):
    """A report could not be rendered; no report file is written."""
