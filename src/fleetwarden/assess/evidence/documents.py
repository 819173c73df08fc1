"""``policy.toml`` and the documents in ``docs/`` (incident plan, disclosure policy).

policy.toml (every key optional)::

    [rotation]      interval_days = 365
    [certificates]  max_age_days = 365
    [controls]      expected = ["C1", ...]
    [alerting]      rules = ["..."]  destinations = ["..."]
    [support]       period_years = 5
    [privacy]       personal_data = true  telemetry_retention_days = 90
    [firmware]      minimum = { "EM-100" = "1.4.0" }
    [probes]        tls_endpoints = ["host:port"]

An incident plan is a text/Markdown document in ``docs/`` whose name contains
``incident``; it states ``Last review: YYYY-MM-DD`` and ``Last exercise: YYYY-MM-DD``.
A disclosure policy is a ``security.txt`` or a document whose name contains
``disclosure`` or ``cvd``.
"""

from __future__ import annotations

import re
import tomllib
from datetime import date
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fleetwarden.assess.errors import EvidenceError
from fleetwarden.assess.evidence.types import IncidentPlan, Policy


class _Section(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Rotation(_Section):
    interval_days: int | None = Field(default=None, ge=1, le=36500)


class _Certificates(_Section):
    max_age_days: int | None = Field(default=None, ge=1, le=36500)


class _Controls(_Section):
    expected: list[str] = Field(default_factory=list, max_length=64)


class _Alerting(_Section):
    rules: list[str] = Field(default_factory=list, max_length=10000)
    destinations: list[str] = Field(default_factory=list, max_length=100)


class _Support(_Section):
    period_years: float | None = Field(default=None, ge=0, le=100)


class _Privacy(_Section):
    personal_data: bool | None = None
    telemetry_retention_days: int | None = Field(default=None, ge=0, le=36500)


class _Firmware(_Section):
    minimum: dict[str, str] = Field(default_factory=dict)


class _Probes(_Section):
    tls_endpoints: list[str] = Field(default_factory=list, max_length=1000)


class PolicyFile(BaseModel):
    model_config = ConfigDict(extra="allow")
    rotation: _Rotation = Field(default_factory=_Rotation)
    certificates: _Certificates = Field(default_factory=_Certificates)
    controls: _Controls = Field(default_factory=_Controls)
    alerting: _Alerting = Field(default_factory=_Alerting)
    support: _Support = Field(default_factory=_Support)
    privacy: _Privacy = Field(default_factory=_Privacy)
    firmware: _Firmware = Field(default_factory=_Firmware)
    probes: _Probes = Field(default_factory=_Probes)


def parse_policy(text: str, path: str) -> Policy:
    try:
        raw: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise EvidenceError(f"invalid TOML: {exc}") from exc
    try:
        p = PolicyFile.model_validate(raw)
    except ValueError as exc:
        raise EvidenceError(f"invalid policy: {str(exc)[:300]}") from exc
    return Policy(
        path=path,
        rotation_days=p.rotation.interval_days,
        max_cert_age_days=p.certificates.max_age_days,
        expected_controls=p.controls.expected,
        alert_rules=p.alerting.rules,
        alert_destinations=p.alerting.destinations,
        support_period_years=p.support.period_years,
        telemetry_retention_days=p.privacy.telemetry_retention_days,
        personal_data=p.privacy.personal_data,
        minimum_firmware=p.firmware.minimum,
        tls_endpoints=p.probes.tls_endpoints,
        raw=raw,
    )


_DATE = r"(\d{4}-\d{2}-\d{2})"
_REVIEW = re.compile(r"(?im)^\W*last[ _-]*review(?:ed)?\W*:?\s*\**\s*" + _DATE)
_EXERCISE = re.compile(r"(?im)^\W*last[ _-]*(?:exercise|exercised|tabletop)\W*:?\s*\**\s*" + _DATE)


def _date(rx: re.Pattern[str], text: str) -> date | None:
    m = rx.search(text)
    if not m:
        return None
    try:
        return date.fromisoformat(m.group(1))
    except ValueError:
        return None


def parse_incident_plan(text: str, path: str) -> IncidentPlan:
    low = text.lower()
    return IncidentPlan(
        path=path,
        last_review=_date(_REVIEW, text),
        last_exercise=_date(_EXERCISE, text),
        mentions_24h=bool(re.search(r"\b24\s*(?:h|hours?)\b", low)),
        mentions_72h=bool(re.search(r"\b72\s*(?:h|hours?)\b", low)),
        has_contact=bool(re.search(r"(?:contact|e-?mail|phone|on-?call)\s*:", low)),
    )


def is_incident_plan(name: str) -> bool:
    return "incident" in name.lower()


def is_disclosure_policy(name: str) -> bool:
    low = name.lower()
    return low == "security.txt" or "disclosure" in low or "cvd" in low
