"""Per-item online statistics: counts by event type, decayed popularity, CTR with a Beta prior.

An item row is a JSON-ready dict ``{"c": {type: count}, "pop": float, "t0": ms, "wm": offset}``.
Rows exist per source partition (what a worker persists) and merged across partitions (what
ranking reads): :class:`ItemStats` holds the merged rows; partial rows add up to it.
"""

from __future__ import annotations

import heapq
from typing import Callable, Iterable, Mapping, MutableMapping

from freshrec.state.decay import add_scalar, growth, value_at

# Event types whose occurrence makes an item more popular, with their weights.
POPULARITY_WEIGHTS: dict[str, float] = {"click": 1.0, "conversion": 3.0, "rating": 1.0}


def new_item_row() -> dict:
    return {"c": {}, "pop": 0.0, "wm": -1}


def add_counts(row: MutableMapping, counts: dict[str, int], ts: int, half_life_ms: float) -> None:
    """Fold one event's per-type counts for this item into ``row`` (popularity decays by ts)."""
    c = row["c"]
    pop = 0.0
    for etype, n in counts.items():
        c[etype] = c.get(etype, 0) + n
        pop += POPULARITY_WEIGHTS.get(etype, 0.0) * n
    if pop:
        add_scalar(row, "pop", pop, ts, half_life_ms)


def merge_row(into: MutableMapping, part: MutableMapping, half_life_ms: float) -> None:
    """Add partial row ``part`` into merged row ``into`` (used when rebuilding merged views)."""
    for etype, n in part.get("c", {}).items():
        into["c"][etype] = into["c"].get(etype, 0) + n
    if part.get("pop"):
        t0 = into.setdefault("t0", part["t0"])
        into["pop"] = into.get("pop", 0.0) + part["pop"] * growth(part["t0"], t0, half_life_ms)


def ctr(row: MutableMapping | None, prior_clicks: float, prior_impressions: float) -> float:
    """Click-through rate with a Beta prior: (clicks + a) / (impressions + a + b)."""
    if row is None:
        return prior_clicks / (prior_clicks + prior_impressions)
    c = row["c"]
    return (c.get("click", 0) + prior_clicks) / (c.get("impression", 0) + prior_clicks + prior_impressions)


class ItemStats:
    """Merged per-item statistics over the partitions this worker owns."""

    def __init__(self, half_life_ms: float) -> None:
        self.half_life_ms = half_life_ms
        self.rows: dict[str, dict] = {}

    def row(self, item_id: str) -> dict:
        row = self.rows.get(item_id)
        if row is None:
            row = self.rows[item_id] = new_item_row()
        return row

    def get(self, item_id: str) -> dict | None:
        return self.rows.get(item_id)

    def add(self, item_id: str, counts: dict[str, int], ts: int) -> None:
        add_counts(self.row(item_id), counts, ts, self.half_life_ms)

    def add_impressions(self, counts: Mapping[str, int]) -> None:
        """Count impressions (``{item: times shown}``, a slate's): ``add`` inlined, as impressions
        add no popularity and are the most frequent row update of the stream."""
        rows = self.rows
        for item, n in counts.items():
            row = rows.get(item)
            if row is None:
                row = rows[item] = new_item_row()
            c = row["c"]
            c["impression"] = c.get("impression", 0) + n

    def merge(self, item_id: str, part: MutableMapping) -> None:
        merge_row(self.row(item_id), part, self.half_life_ms)

    def count(self, item_id: str, etype: str) -> int:
        row = self.rows.get(item_id)
        return 0 if row is None else row["c"].get(etype, 0)

    def popularity(self, item_id: str, now_ms: int) -> float:
        row = self.rows.get(item_id)
        if row is None or not row.get("pop"):
            return 0.0
        return value_at(row["pop"], row["t0"], now_ms, self.half_life_ms)

    def top(self, k: int, now_ms: int, keep: Callable[[str], bool] | None = None,
            items: Iterable[str] | None = None) -> list[tuple[str, float]]:
        """The ``k`` most popular items at ``now_ms`` (optionally among ``items``, filtered)."""
        return top_of(self.popularity_now(now_ms), k, keep=keep, items=items)

    def popularity_now(self, now_ms: int) -> dict[str, float]:
        """Decayed popularity at ``now_ms`` of every item that has any, in one pass (trending
        ranks the catalogue and then each category: one pass instead of one per list)."""
        hl = self.half_life_ms
        return {item: value_at(row["pop"], row["t0"], now_ms, hl) for item, row in self.rows.items() if row.get("pop")}

    def __len__(self) -> int:
        return len(self.rows)


def top_of(scores: Mapping[str, float], k: int, keep: Callable[[str], bool] | None = None,
           items: Iterable[str] | None = None) -> list[tuple[str, float]]:
    """:meth:`ItemStats.top` over scores already computed (:meth:`ItemStats.popularity_now`):
    the ``k`` best ``(item, score)``, optionally among ``items``, filtered by ``keep``."""
    pairs = scores.items() if items is None else ((i, scores[i]) for i in items if i in scores)
    if keep is not None:
        pairs = ((i, v) for i, v in pairs if keep(i))
    return [(item, score) for score, item in heapq.nlargest(k, ((v, i) for i, v in pairs))]
