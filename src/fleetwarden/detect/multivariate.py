"""The multivariate second opinion: river's Half-Space Trees over baseline residuals.

Per-metric baselines judge each metric alone; an attacker can keep every metric just
under its threshold. Half-Space Trees (Tan, Ting & Liu 2011; river's
``anomaly.HalfSpaceTrees``) score how isolated a point is in the joint space. The
features are the device's standardised residuals from its own baseline (so one model
per peer group serves devices of very different volumes), mapped to [0, 1].

Why river: maintained, pure-Python-API streaming ML with a documented HST whose memory
is fixed (``n_trees * 2**height`` nodes) and which learns one sample at a time; a batch
library (scikit-learn's IsolationForest) would need periodic refits and window storage.

Invariants: the model learns only from windows no other detector flagged, and only one
in ``learn_every`` of them (cost and contamination bound); it never raises an alert on
its own, it only corroborates (severity one step up, score in the evidence).
"""

from __future__ import annotations

from typing import Any

from fleetwarden.detect.baseline import BASELINE_METRICS

_NAMES = tuple(f"z_{m}" for m in BASELINE_METRICS)


class SecondOpinion:
    def __init__(
        self,
        *,
        seed: int = 0,
        n_trees: int = 10,
        height: int = 8,
        window_size: int = 250,
        learn_every: int = 8,
        threshold: float = 0.9,
    ) -> None:
        self.seed = seed
        self.n_trees = n_trees
        self.height = height
        self.window_size = window_size
        self.learn_every = learn_every
        self.threshold = threshold
        self._models: dict[str, Any] = {}
        self._tick = 0
        self.z: list[float] = [0.0] * len(BASELINE_METRICS)

    def _model(self, group: str) -> Any:
        m = self._models.get(group)
        if m is None:
            from river.anomaly import HalfSpaceTrees

            m = self._models[group] = HalfSpaceTrees(
                n_trees=self.n_trees,
                height=self.height,
                window_size=self.window_size,
                seed=self.seed,
            )
        return m

    def features(self) -> dict[str, float]:
        # residual z in [-5, 10] -> [0, 1]; the asymmetry keeps resolution for increases
        return {
            n: (min(max(z, -5.0), 10.0) + 5.0) / 15.0 for n, z in zip(_NAMES, self.z, strict=True)
        }

    def observe(self, groups: tuple[str, ...], *, flagged: bool) -> float | None:
        """Score a flagged window; learn from one clean window in ``learn_every``."""
        model = self._model(groups[0] if groups else "*")
        if flagged:
            return float(model.score_one(self.features()))
        self._tick += 1
        if self._tick % self.learn_every == 0:
            model.learn_one(self.features())
        return None
