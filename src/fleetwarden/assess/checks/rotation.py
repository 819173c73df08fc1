"""C5 OTA key rotation and M4 no key rotation plan."""

from __future__ import annotations

from collections.abc import Iterator

from fleetwarden.assess.checks import check
from fleetwarden.assess.checks._util import age_days, cert_resource, device_certs, status
from fleetwarden.assess.evidence import Evidence
from fleetwarden.assess.model import Result

MAX_INTERVAL_DAYS = 397  # the CA/Browser Forum ceiling, a sane upper bound for devices


@check(
    title="No key rotation plan",
    severity="high",
    rationale="Without a rotation interval keys live as long as the device; a leaked key "
    "stays useful for years (mistake M4).",
    remediation="Set [rotation] interval_days in policy and rotate over the air (EST "
    "re-enrolment).",
    effort="M",
    needs=("policy",),
    controls=("C5",),
    mistakes=("M4",),
    task="rotation_schedule",
    scope="fleet",
)
def rotation_policy_missing(ev: Evidence) -> Iterator[Result]:
    assert ev.policy is not None
    yield status(ev.policy.rotation_days is not None, "policy.toml", "no [rotation] interval_days")


@check(
    title="Key rotation interval too long",
    severity="low",
    rationale=f"Rotation less often than every {MAX_INTERVAL_DAYS} days gives a stolen key "
    "a long life.",
    remediation="Shorten [rotation] interval_days.",
    effort="S",
    needs=("policy",),
    controls=("C5",),
    task="rotation_schedule",
    scope="fleet",
)
def rotation_interval_too_long(ev: Evidence) -> Iterator[Result]:
    assert ev.policy is not None
    if ev.policy.rotation_days is not None:
        days = ev.policy.rotation_days
        yield status(days <= MAX_INTERVAL_DAYS, "policy.toml", f"interval {days} days")


@check(
    title="Device certificate overdue for rotation",
    severity="medium",
    rationale="A certificate older than the rotation interval shows rotation is planned but "
    "not happening (mistake M4).",
    remediation="Run the rotation job; find devices that fail to re-enrol.",
    effort="M",
    needs=("certs", "policy"),
    controls=("C5",),
    mistakes=("M4",),
    task="rotation_schedule",
)
def rotation_certificate_overdue(ev: Evidence) -> Iterator[Result]:
    assert ev.policy is not None
    days = ev.policy.rotation_days
    if days is None:
        return
    for c in device_certs(ev):
        age = age_days(ev.now, c.not_before)
        yield status(age <= days, cert_resource(c), f"{age:.0f} days since issue, interval {days}")


@check(
    title="Device certificate validity longer than 825 days",
    severity="low",
    rationale="Very long validity means the certificate is not a rotation backstop.",
    remediation="Issue device certificates valid for at most the rotation interval plus grace.",
    effort="S",
    needs=("certs",),
    controls=("C5",),
    task="rotation_schedule",
)
def rotation_validity_too_long(ev: Evidence) -> Iterator[Result]:
    for c in device_certs(ev):
        days = age_days(c.not_after, c.not_before)
        yield status(days <= 825, cert_resource(c), f"valid {days:.0f} days")
