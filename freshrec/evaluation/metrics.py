"""Evaluation metrics as pure functions (no state, no I/O), so each is unit-tested by hand.

Ranking metrics take the 1-based rank of the held-out item in a recommended list, with ``0``
meaning "not in the list" (a miss). With one relevant item per test, as in prequential
evaluation, HitRate@k equals Recall@k, NDCG@k is ``1 / log2(rank + 1)`` and MRR is ``1 / rank``,
each 0 for a miss and averaged over tests.

Beyond-accuracy metrics look at the lists themselves: catalogue coverage, intra-list diversity
(from item categories) and novelty (self-information of the items' popularity share).

Click-prediction metrics (MIND) take per-shown-item labels and scores: rank-based AUC (ties
count half) and log loss.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "rank_of", "hit_rate", "ndcg", "mrr", "catalogue_coverage", "intra_list_diversity",
    "jaccard", "novelty", "auc", "log_loss", "rolling_mean",
]


def rank_of(item: str, recommended: Sequence[str], k: int | None = None) -> int:
    """1-based rank of ``item`` in the first ``k`` of ``recommended``; 0 when absent."""
    top = recommended if k is None else recommended[:k]
    for pos, rec in enumerate(top, 1):
        if rec == item:
            return pos
    return 0


def _ranks(ranks: Sequence[int] | np.ndarray) -> np.ndarray:
    r = np.asarray(ranks, dtype=np.int64)
    if r.ndim != 1:
        raise ValueError("ranks must be a 1-d sequence")
    if (r < 0).any():
        raise ValueError("ranks are 1-based, 0 for a miss; got a negative rank")
    return r


def _hits(r: np.ndarray, k: int) -> np.ndarray:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return (r >= 1) & (r <= k)


def hit_rate(ranks: Sequence[int] | np.ndarray, k: int) -> float:
    """Share of tests whose item is in the top ``k`` (= Recall@k with one relevant item)."""
    r = _ranks(ranks)
    return float(_hits(r, k).mean()) if r.size else 0.0


def ndcg(ranks: Sequence[int] | np.ndarray, k: int) -> float:
    """Mean NDCG@k with one relevant item: ``1 / log2(rank + 1)`` for a hit, 0 for a miss."""
    r = _ranks(ranks)
    if not r.size:
        return 0.0
    hit = _hits(r, k)
    gains = np.zeros(r.size)
    gains[hit] = 1.0 / np.log2(r[hit] + 1.0)
    return float(gains.mean())


def mrr(ranks: Sequence[int] | np.ndarray, k: int) -> float:
    """Mean reciprocal rank within the top ``k`` (0 when the item is not there)."""
    r = _ranks(ranks)
    if not r.size:
        return 0.0
    hit = _hits(r, k)
    rr = np.zeros(r.size)
    rr[hit] = 1.0 / r[hit]
    return float(rr.mean())


def catalogue_coverage(recommended: Iterable[str], items_seen: int | Iterable[str]) -> float:
    """Distinct items ever recommended, over the number of distinct items seen in the stream."""
    rec = set(recommended)
    n_seen = items_seen if isinstance(items_seen, int) else len(set(items_seen))
    return len(rec) / n_seen if n_seen else 0.0


def jaccard(a: frozenset | set, b: frozenset | set) -> float:
    """|a ∩ b| / |a ∪ b| (0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def intra_list_diversity(items: Sequence[str], categories: Mapping[str, frozenset | set | int]) -> float | None:
    """1 - mean pairwise Jaccard similarity of the items' category sets.

    ``categories`` maps an item to its set of categories, or to an int bit mask of them (one
    bit per category, same result, several times faster).
    Items without known categories are skipped; None when fewer than two items remain (the
    list says nothing about diversity then, so it is left out of the average, not counted 0).
    """
    cats = [c for c in (categories.get(i) for i in items) if c]
    n = len(cats)
    if n < 2:
        return None
    total = 0.0
    if isinstance(cats[0], int):  # bit masks (one bit per category): the evaluator's fast path
        for i in range(n):
            ci = cats[i]
            for j in range(i + 1, n):
                cj = cats[j]
                total += (ci & cj).bit_count() / (ci | cj).bit_count()
    else:
        for i in range(n):
            ci = cats[i]
            for j in range(i + 1, n):
                total += jaccard(ci, cats[j])
    return 1.0 - total / (n * (n - 1) / 2)


def novelty(items: Sequence[str], counts: Mapping[str, int], total: int, n_items: int) -> float | None:
    """Mean self-information ``-log2 p(i)`` of the recommended items.

    ``p(i) = (counts[i] + 1) / (total + n_items)`` is item i's share of the positive
    engagements so far, Laplace-smoothed so that never-engaged items have a finite value.
    ``total`` is the number of engagements so far and ``n_items`` the number of distinct items
    seen. None for an empty list.
    """
    if not items:
        return None
    denom = max(total + n_items, 1)
    return sum(-math.log2((counts.get(i, 0) + 1) / denom) for i in items) / len(items)


def auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float | None:
    """Rank-based ROC AUC (Mann-Whitney U): P(score of a positive > score of a negative).

    Tied scores get their average rank, so a tie counts one half. None when the labels are
    all one class (AUC is undefined).
    """
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError("labels and scores must be 1-d and of the same length")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    # Average 1-based ranks over groups of equal scores.
    boundaries = np.flatnonzero(np.diff(sorted_s)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [s.size]))
    avg_rank = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(s.size)
    ranks[order] = np.repeat(avg_rank, ends - starts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def log_loss(labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray,
             eps: float = 1e-15) -> float | None:
    """Mean binary cross-entropy of probabilities ``probs`` (clipped to [eps, 1 - eps])."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1.0 - eps)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError("labels and probs must be 1-d and of the same length")
    if not y.size:
        return None
    return float(-(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)).mean())


def rolling_mean(values: Sequence[float] | np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` values (shorter at the start), same length."""
    v = np.asarray(values, dtype=np.float64)
    if window < 1:
        raise ValueError("window must be >= 1")
    if not v.size:
        return v
    c = np.concatenate(([0.0], np.cumsum(v)))
    idx = np.arange(1, v.size + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)
