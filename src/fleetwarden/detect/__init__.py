"""Anomaly detection and alerting (control C9).

Per-device metric windows (:mod:`.metrics`) go through Device-Defender-style rules
(:mod:`.rules`), learned per-device baselines and novelty (:mod:`.baseline`) and a
multivariate second opinion (:mod:`.multivariate`), combined by :class:`Detector`
(:mod:`.engine`). Alerts live in the registry (:mod:`.alerts`), go out through sinks
(:mod:`.sinks`) and may trigger mitigations (:mod:`.mitigation`). Detection quality is
measured on a simulated fleet (:mod:`.simulate`).
"""

from fleetwarden.detect.baseline import BaselineConfig, Baselines
from fleetwarden.detect.engine import Detector, Signal
from fleetwarden.detect.metrics import Intake, MetricWindow, parse_window
from fleetwarden.detect.rules import Rule, RuleEngine, load_rules

__all__ = [
    "BaselineConfig",
    "Baselines",
    "Detector",
    "Intake",
    "MetricWindow",
    "Rule",
    "RuleEngine",
    "Signal",
    "load_rules",
    "parse_window",
]
