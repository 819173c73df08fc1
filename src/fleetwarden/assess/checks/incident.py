"""C10 documented incident plan, disclosure policy and support period."""

from __future__ import annotations

from collections.abc import Iterator

from fleetwarden.assess.checks import check
from fleetwarden.assess.checks._util import status
from fleetwarden.assess.evidence import Evidence
from fleetwarden.assess.model import FAIL, MANUAL, Result

STALE_DAYS = 365


@check(
    title="No incident response plan",
    severity="high",
    rationale="Without a plan, the first hours of an incident are spent deciding who does "
    "what, and reporting clocks (CRA 24 h/72 h) are missed.",
    remediation="Write an incident plan (roles, contacts, device isolation, key revocation, "
    "reporting) in docs/ and review it yearly.",
    effort="M",
    needs=("docs",),
    controls=("C10",),
    task="incident_plan",
    scope="fleet",
)
def incident_plan_missing(ev: Evidence) -> Iterator[Result]:
    yield status(bool(ev.docs.incident_plans), "docs/", "no incident plan document")


@check(
    title="Incident plan not reviewed in the last year",
    severity="medium",
    rationale="A plan not reviewed for a year names people who left and systems that changed.",
    remediation="Review the plan and record 'Last review: YYYY-MM-DD'.",
    effort="S",
    needs=("docs",),
    controls=("C10",),
    task="incident_plan",
    scope="file",
)
def incident_plan_review_stale(ev: Evidence) -> Iterator[Result]:
    for p in ev.docs.incident_plans:
        if p.last_review is None:
            yield MANUAL(p.path, "no 'Last review:' date in the plan")
        else:
            age = (ev.now.date() - p.last_review).days
            yield status(age <= STALE_DAYS, p.path, f"last review {p.last_review}")


@check(
    title="Incident plan never exercised in the last year",
    severity="medium",
    rationale="An unexercised plan fails on first contact; a yearly tabletop finds the gaps.",
    remediation="Run a tabletop exercise and record 'Last exercise: YYYY-MM-DD'.",
    effort="S",
    needs=("docs",),
    controls=("C10",),
    task="tabletop",
    scope="file",
)
def incident_plan_not_exercised(ev: Evidence) -> Iterator[Result]:
    for p in ev.docs.incident_plans:
        if p.last_exercise is None:
            yield FAIL(p.path, "no exercise recorded")
        else:
            age = (ev.now.date() - p.last_exercise).days
            yield status(age <= STALE_DAYS, p.path, f"last exercise {p.last_exercise}")


@check(
    title="Incident plan lacks the regulatory reporting clocks",
    severity="medium",
    rationale="CRA Art. 14 (from 11 Sep 2026) and NIS2 Art. 23 require an early warning "
    "within 24 h and a notification within 72 h.",
    remediation="Add the 24 h early warning and 72 h notification steps with owners.",
    effort="S",
    needs=("docs",),
    controls=("C10",),
    cra=("Art. 14",),
    task="incident_plan",
    scope="file",
)
def incident_plan_reporting_clocks(ev: Evidence) -> Iterator[Result]:
    for p in ev.docs.incident_plans:
        yield status(p.mentions_24h and p.mentions_72h, p.path, "24 h / 72 h steps missing")


@check(
    title="Incident plan has no contact",
    severity="low",
    rationale="A plan needs a reachable contact (on-call, e-mail, phone).",
    remediation="Add 'Contact:' lines for the incident lead and deputies.",
    effort="S",
    needs=("docs",),
    controls=("C10",),
    task="incident_plan",
    scope="file",
)
def incident_plan_no_contact(ev: Evidence) -> Iterator[Result]:
    for p in ev.docs.incident_plans:
        yield status(p.has_contact, p.path, "no contact line")


@check(
    title="No coordinated vulnerability disclosure policy",
    severity="medium",
    rationale="Researchers who find a flaw need a way to report it (ETSI 5.2-1, CRA II(5)).",
    remediation="Publish a disclosure policy and a security.txt with a contact.",
    effort="S",
    needs=("docs",),
    controls=("C10",),
    etsi=("5.2-1",),
    cra=("II(5)", "II(6)"),
    task="cvd_policy",
    scope="fleet",
)
def incident_disclosure_policy_missing(ev: Evidence) -> Iterator[Result]:
    yield status(bool(ev.docs.disclosure_policies), "docs/", "no security.txt / disclosure")


@check(
    title="Support period not published or under five years",
    severity="low",
    rationale="Buyers must know how long devices get security updates; the CRA sets at "
    "least five years.",
    remediation="Publish the support period ([support] period_years >= 5).",
    effort="S",
    needs=("policy",),
    controls=(),
    owasp=("I4",),
    etsi=("5.3-13",),
    cra=("Art. 13", "II(8)"),
    nistir=("8259B",),
    task="cvd_policy",
    scope="fleet",
)
def incident_support_period(ev: Evidence) -> Iterator[Result]:
    assert ev.policy is not None
    years = ev.policy.support_period_years
    yield status(years is not None and years >= 5, "policy.toml", f"support period {years}")
