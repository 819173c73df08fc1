"""Risk per finding: OWASP Risk Rating Methodology with fleet modifiers.

likelihood and impact are factors 0-9 (the check's own estimate), adjusted by:
- blast radius: impact + 2 x (share of the fleet affected); fleet-wide findings count 1;
- risk class: impact + 1 when an affected device is high risk (risk_class high, or a
  health/energy/payments sector, which are expected to keep keys in a secure element);
- exposure: likelihood + 1 when the fleet is reachable from the internet (public APN or
  an exposed broker listener without mutual TLS), except for physical-access findings;
- compound: a finding tied to one of M1-M4 while two or more are present is Critical.
Bands: Low < 3 <= Medium < 6 <= High; the OWASP matrix combines them into
Note/Low/Medium/High/Critical. ``score`` = likelihood x impact scaled to 0-10.
"""

from __future__ import annotations

from dataclasses import dataclass

LEVELS = ("note", "low", "medium", "high", "critical")
_MATRIX = {
    # (likelihood band, impact band) -> overall, as in the OWASP methodology
    ("low", "low"): "note",
    ("medium", "low"): "low",
    ("high", "low"): "medium",
    ("low", "medium"): "low",
    ("medium", "medium"): "medium",
    ("high", "medium"): "high",
    ("low", "high"): "medium",
    ("medium", "high"): "high",
    ("high", "high"): "critical",
}


def band(x: float) -> str:
    return "low" if x < 3 else "medium" if x < 6 else "high"


@dataclass(frozen=True)
class Risk:
    likelihood: float
    impact: float
    level: str
    score: float

    @property
    def rank(self) -> int:
        return LEVELS.index(self.level)


def rate(
    likelihood: float,
    impact: float,
    *,
    share: float,
    high_risk: bool,
    exposed: bool,
    physical: bool,
    compound: bool,
) -> Risk:
    lik = min(9.0, likelihood + (1.0 if exposed and not physical else 0.0))
    imp = min(9.0, impact + 2.0 * max(0.0, min(1.0, share)) + (1.0 if high_risk else 0.0))
    level = _MATRIX[(band(lik), band(imp))]
    if compound:
        level = "critical"
    return Risk(round(lik, 1), round(imp, 1), level, round(lik * imp / 8.1, 1))
