"""Trending items: the most popular items now (decayed popularity), globally and per category.

Recomputed at most once per refresh interval from the merged item statistics and cached, so the
recommender and the publisher read a ready list.
"""

from __future__ import annotations

from freshrec.state.catalogue import Catalogue
from freshrec.state.popularity import ItemStats, top_of


class Trending:
    """Cached global and per-category trending lists (``[(item_id, score)]``, best first)."""

    def __init__(self, item_stats: ItemStats, catalogue: Catalogue, k: int) -> None:
        self.item_stats = item_stats
        self.catalogue = catalogue
        self.k = k
        self.global_list: list[tuple[str, float]] = []
        self.by_category: dict[str, list[tuple[str, float]]] = {}
        self.refreshed_at_ms = 0

    def refresh(self, now_ms: int, item_stats: ItemStats | None = None) -> None:
        """Recompute the lists at stream time ``now_ms`` (deleted items excluded)."""
        if item_stats is not None:
            self.item_stats = item_stats
        deleted = self.catalogue.deleted
        keep = (lambda item: item not in deleted) if deleted else None
        scores = self.item_stats.popularity_now(now_ms)
        self.global_list = top_of(scores, self.k, keep=keep)
        self.by_category = {
            cat: top
            for cat, items in self.catalogue.by_category.items()
            if (top := top_of(scores, self.k, items=items))
        }
        self.refreshed_at_ms = now_ms
