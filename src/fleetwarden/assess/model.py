"""The finding model every output is rendered from.

Invariants: a :class:`Check` is a pure function of :class:`~.evidence.Evidence` with
validated :class:`CheckMeta`; its id equals its function name; it yields one
:class:`Result` per resource with status PASS, FAIL or MANUAL. Missing evidence gives
MANUAL, never FAIL: the engine does not call a check whose evidence kinds are absent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, NamedTuple

from fleetwarden.assess import frameworks as fw

if TYPE_CHECKING:
    from fleetwarden.assess.evidence import Evidence


class Status(StrEnum):
    PASS = "PASS"  # noqa: S105 - a status, not a password
    FAIL = "FAIL"
    MANUAL = "MANUAL"


class Severity(StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    INFO = "info"

    @property
    def rank(self) -> int:
        return {"critical": 4, "high": 3, "medium": 2, "low": 1, "info": 0}[self.value]


class Effort(StrEnum):
    """Work to fix, in person-days: S <= 2, M <= 5, L <= 15."""

    S = "S"
    M = "M"
    L = "L"

    @property
    def days(self) -> int:
        return {"S": 2, "M": 5, "L": 15}[self.value]


#: Evidence kinds a check can need (names of Evidence fields, see evidence/__init__).
KINDS = frozenset(
    {
        "inventory",
        "certs",
        "cas",
        "crls",
        "broker",
        "network",
        "vlans",
        "firmware",
        "firmware_keys",
        "sbom",
        "vulns",
        "logs",
        "policy",
        "docs",
        "blocklist",
        "tls_probe",
    }
)


class Result(NamedTuple):
    """One resource's outcome. A NamedTuple: checks make millions of these on big fleets."""

    status: Status
    resource: str
    detail: str = ""


def PASS(resource: str, detail: str = "") -> Result:
    return Result(Status.PASS, resource, detail)


def FAIL(resource: str, detail: str = "") -> Result:
    return Result(Status.FAIL, resource, detail)


def MANUAL(resource: str, detail: str = "") -> Result:
    return Result(Status.MANUAL, resource, detail)


@dataclass(frozen=True)
class CheckMeta:
    id: str
    title: str
    severity: Severity
    rationale: str
    remediation: str
    effort: Effort
    needs: tuple[str, ...]
    controls: tuple[str, ...]
    mistakes: tuple[str, ...] = ()
    owasp: tuple[str, ...] = ()
    etsi: tuple[str, ...] = ()
    cra: tuple[str, ...] = ()
    nistir: tuple[str, ...] = ()
    #: likelihood and impact factors (0-9) for the OWASP Risk Rating
    likelihood: float = 5.0
    impact: float = 5.0
    #: Device Defender audit check this one gives parity with, if any
    device_defender: str = ""
    #: the plan task that closes it (plan.TASKS key)
    task: str = ""
    #: "device" when resources are device ids, "file" for bundle paths, "fleet" otherwise
    scope: str = "device"

    def validate(self) -> None:
        if not self.id.replace("_", "").isalnum() or not self.id.islower():
            raise ValueError(f"check id {self.id!r} must be snake_case")
        for name in ("title", "rationale", "remediation"):
            if not getattr(self, name).strip():
                raise ValueError(f"{self.id}: empty {name}")
        if not self.controls and not self.owasp:
            raise ValueError(f"{self.id}: maps to no control and no OWASP item")
        unknown = set(self.needs) - KINDS
        if unknown or not self.needs:
            raise ValueError(f"{self.id}: bad evidence kinds {sorted(unknown)}")
        for kind in ("controls", "mistakes", "owasp", "etsi", "cra", "nistir"):
            fw.validate_refs(kind, getattr(self, kind))
        if not (0 <= self.likelihood <= 9 and 0 <= self.impact <= 9):
            raise ValueError(f"{self.id}: risk factors must be 0-9")
        if self.scope not in {"device", "file", "fleet"}:
            raise ValueError(f"{self.id}: bad scope {self.scope!r}")


CheckFn = Callable[["Evidence"], Iterable[Result]]


@dataclass(frozen=True)
class Check:
    meta: CheckMeta
    fn: CheckFn = field(compare=False)

    def run(self, ev: Evidence) -> list[Result]:
        return list(self.fn(ev))
