"""C9 anomaly alerting: rules exist and reach someone."""

from __future__ import annotations

from collections.abc import Iterator

from fleetwarden.assess.checks import check
from fleetwarden.assess.checks._util import status
from fleetwarden.assess.evidence import Evidence
from fleetwarden.assess.model import Result

KEY_TOPICS = {
    "auth": ("auth", "login", "connect"),
    "firmware": ("firmware", "update", "flash"),
    "traffic": ("traffic", "volume", "rate", "bytes"),
}


@check(
    title="No anomaly alert rules",
    severity="high",
    rationale="Without alert rules a compromise is found by customers, not by you.",
    remediation="Define alert rules ([alerting] rules) for authentication failures, "
    "unexpected firmware, traffic spikes and new client ids.",
    effort="M",
    needs=("policy",),
    controls=("C9",),
    task="alert_rules",
    scope="fleet",
)
def alerting_rules_missing(ev: Evidence) -> Iterator[Result]:
    assert ev.policy is not None
    yield status(bool(ev.policy.alert_rules), "policy.toml", "no [alerting] rules")


@check(
    title="Alerts go nowhere",
    severity="medium",
    rationale="Rules without a destination (pager, SIEM, mail) are never seen.",
    remediation="Set [alerting] destinations.",
    effort="S",
    needs=("policy",),
    controls=("C9",),
    task="alert_rules",
    scope="fleet",
)
def alerting_no_destination(ev: Evidence) -> Iterator[Result]:
    assert ev.policy is not None
    if ev.policy.alert_rules:
        yield status(bool(ev.policy.alert_destinations), "policy.toml", "no destinations")


@check(
    title="Alert rules miss key threat areas",
    severity="low",
    rationale="Rules should cover at least authentication, firmware changes and traffic.",
    remediation="Add rules for the missing areas.",
    effort="S",
    needs=("policy",),
    controls=("C9",),
    task="alert_rules",
    scope="fleet",
)
def alerting_coverage_gaps(ev: Evidence) -> Iterator[Result]:
    assert ev.policy is not None
    if not ev.policy.alert_rules:
        return
    text = " ".join(ev.policy.alert_rules).lower()
    missing = [k for k, words in KEY_TOPICS.items() if not any(w in text for w in words)]
    yield status(not missing, "policy.toml", f"no rule about {', '.join(missing)}")
