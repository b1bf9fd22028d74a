"""Drift: population stability (PSI) of the click model's inputs and of its predictions.

What the worker serves is sampled as it is ranked: the feature rows of the items of each
published list (the click model's inputs, :data:`~freshrec.state.clickmodel.FEATURES`) and
their predicted click probabilities. Rows are collected in windows of ``window`` rows, and each
window's distribution is compared, per column, with the previous window's (its deciles are the
bins):

    PSI = sum over bins (p_window - p_reference) * ln(p_window / p_reference)

Rule of thumb: below 0.1 stable, 0.1 - 0.25 a moderate shift, above 0.25 a major one. A
constant column gets bins below / at / above its value, so any change of it shows.

Window over window, not against a fixed reference: a model learning online drifts by design
(measured on a synthetic stream from a cold start: PSI against the first window reached 3 to 9
while nothing about the traffic changed), so a fixed reference would alarm forever; a change of
the traffic shows as a spike. The reference is dropped on demand (:meth:`DriftMonitor.rebase`,
after a promotion), and windows are counted in rows, not time, so the measure means the same at
any event rate.
"""

from __future__ import annotations

from collections import deque
from typing import Sequence

import numpy as np

EPS = 1e-4  # proportion floor, so an empty bin does not make the PSI infinite
# Bin edges are rounded to this: a shift smaller than 0.01 of a feature is not drift. Without it
# a nearly constant column that creeps (item freshness exp(-age / 1 day) in live traffic: 0.9995,
# then 0.9990) lands wholly outside the previous window's deciles: PSI 7 to 14 on steady
# closed-loop traffic, measured.
RESOLUTION = 0.01


def bin_edges(reference: np.ndarray, bins: int, resolution: float = RESOLUTION) -> np.ndarray:
    """Quantile edges of a reference column, rounded to ``resolution``; values above its maximum
    fall in a bin of their own."""
    q = np.quantile(reference, np.linspace(0.0, 1.0, bins + 1))
    edges = np.unique(np.round(q / resolution) * resolution)
    edges[-1] = np.nextafter(edges[-1], np.inf)
    return edges


def proportions(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of ``values`` per bin (below the lowest edge, between edges, at/above the top)."""
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    p = counts / max(len(values), 1)
    return np.maximum(p, EPS)


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    return float(np.sum((actual - expected) * np.log(actual / expected)))


class DriftMonitor:
    """Windowed PSI per named column against a reference window (see the module docstring)."""

    def __init__(self, names: Sequence[str], window: int = 5000, bins: int = 10) -> None:
        self.names = list(names)
        self.window = int(window)
        self.bins = int(bins)
        self._rows: list[np.ndarray] = []
        self._n = 0
        self._ref: list[tuple[np.ndarray, np.ndarray]] | None = None  # per column: (edges, proportions)
        self.psi: dict[str, float] = {}
        self.windows = 0
        self.recent: deque[tuple[str, float]] = deque(maxlen=20)  # (column, max PSI) of the last windows

    def observe(self, rows: np.ndarray) -> None:
        """Add rows of shape ``(n, len(names))``; each ``window`` rows in arrival order close a
        window (the same windows however the rows are split between calls)."""
        rows = np.asarray(rows, dtype=np.float64)
        while len(rows):
            take = min(len(rows), self.window - self._n)
            self._rows.append(rows[:take])
            self._n += take
            rows = rows[take:]
            if self._n >= self.window:
                self._close(np.concatenate(self._rows))
                self._rows, self._n = [], 0

    def _close(self, data: np.ndarray) -> None:
        self.windows += 1
        if self._ref is not None:
            self.psi = {name: round(psi(expected, proportions(data[:, j], edges)), 6)
                        for j, (name, (edges, expected)) in enumerate(zip(self.names, self._ref))}
            top = max(self.psi.items(), key=lambda kv: kv[1])
            self.recent.append((top[0], top[1]))
        else:
            self.psi = {name: 0.0 for name in self.names}
        self._ref = []  # this window is the next one's reference
        for j in range(data.shape[1]):
            edges = bin_edges(data[:, j], self.bins)
            self._ref.append((edges, proportions(data[:, j], edges)))

    def rebase(self) -> None:
        """Forget the reference: the next full window becomes it (after a model change)."""
        self._ref, self._rows, self._n, self.psi = None, [], 0, {}

    def snapshot(self) -> dict:
        top = max(self.psi.items(), key=lambda kv: kv[1]) if self.psi else (None, 0.0)
        return {"psi": dict(self.psi), "windows": self.windows, "window_rows": self.window,
                "max_feature": top[0], "max_psi": top[1], "has_reference": self._ref is not None,
                "recent": [list(r) for r in self.recent]}
