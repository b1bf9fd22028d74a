"""Online (progressive) click-prediction quality: logloss and AUC over the last impressions.

Every shown item of an impression is predicted by the click model *before* it learns the label
(the impression's clicks, known once its click window has passed), so the pairs (prediction,
label) are an honest test set, like River's progressive validation. The last ``window`` pairs
are kept in a ring buffer; logloss and AUC are computed from it when asked (about once a second
for /metrics), so the per-event cost is two array writes.
"""

from __future__ import annotations

import numpy as np


class OnlineClickMetrics:
    """Rolling logloss and ROC AUC of predicted click probabilities against observed clicks."""

    def __init__(self, window: int = 20_000) -> None:
        self.window = int(window)
        self._p = np.zeros(self.window, dtype=np.float64)
        self._y = np.zeros(self.window, dtype=np.int8)
        self._n = 0  # pairs seen in all

    def observe(self, probs: np.ndarray, labels: np.ndarray) -> None:
        """Add predictions (click probabilities) and their 0/1 labels."""
        probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.int8)
        for start in range(0, len(probs), self.window):
            p, y = probs[start:start + self.window], labels[start:start + self.window]
            idx = (self._n + np.arange(len(p))) % self.window
            self._p[idx], self._y[idx] = p, y
            self._n += len(p)

    def _pairs(self) -> tuple[np.ndarray, np.ndarray]:
        n = min(self._n, self.window)
        return self._p[:n], self._y[:n]

    def logloss(self) -> float | None:
        p, y = self._pairs()
        if not len(p):
            return None
        p = np.clip(p, 1e-7, 1 - 1e-7)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))

    def auc(self) -> float | None:
        """Probability that a clicked item was scored above an unclicked one (ties count half)."""
        p, y = self._pairs()
        pos = int(y.sum())
        neg = len(y) - pos
        if not pos or not neg:
            return None
        order = np.argsort(p, kind="mergesort")
        ranks = np.empty(len(p), dtype=np.float64)
        sorted_p = p[order]
        # average ranks over ties
        _, first, counts = np.unique(sorted_p, return_index=True, return_counts=True)
        avg = first + (counts - 1) / 2.0 + 1.0
        ranks[order] = np.repeat(avg, counts)
        return float((ranks[y == 1].sum() - pos * (pos + 1) / 2.0) / (pos * neg))

    def snapshot(self) -> dict:
        n = min(self._n, self.window)
        return {"click_pairs": n, "click_rate": float(self._y[:n].mean()) if n else None,
                "logloss": self.logloss(), "auc": self.auc()}
