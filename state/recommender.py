"""The baseline recommender: co-visitation of the user's recent items, plus trending.

Candidates are the normalised co-visitation neighbours of the user's most recent items, weighted
by recency (1 / rank), plus the trending list with a small weight so that lists are always full
and new users get trending. Seen and deleted items are excluded. This is the floor that the
learning recommender (River + HNSW + online ranker) has to beat.
"""

from __future__ import annotations

import heapq
from typing import Iterable

from freshrec.state.catalogue import Catalogue
from freshrec.state.covisitation import CoVisitation
from freshrec.state.trending import Trending
from freshrec.state.users import recent_items

TRENDING_WEIGHT = 1e-3  # trending only breaks ties and fills lists


def covis_scores(covis: CoVisitation, recent: list[str], neighbours_n: int) -> dict[str, float]:
    """Co-visitation score of every neighbour of the user's ``recent`` items (newest first),
    each item's normalised neighbour weights scaled by its recency weight ``1 / (1 + rank)``."""
    scores: dict[str, float] = {}
    get = scores.get
    for rank, item in enumerate(recent):
        w = 1.0 / (1 + rank)
        for neighbour, s in covis.neighbours(item, neighbours_n):
            scores[neighbour] = get(neighbour, 0.0) + w * s
    return scores


def covis_scores_of(covis: CoVisitation, recent: list[str], neighbours_n: int,
                    items: Iterable[str]) -> dict[str, float]:
    """:func:`covis_scores` of ``items`` only (the others left out), with the same sums: a slate
    of ten items looks each up in ~20 neighbour maps instead of merging ~1000 neighbours."""
    scores: dict[str, float] = {}
    targets = list(dict.fromkeys(items))
    get = scores.get
    for rank, item in enumerate(recent):
        weights = covis.neighbour_map(item, neighbours_n)
        if not weights:
            continue
        w = 1.0 / (1 + rank)
        for target in targets:
            s = weights.get(target)
            if s is not None:
                scores[target] = get(target, 0.0) + w * s
    return scores


class StatelessRecommender:
    """The recommender protocol's learning hooks as no-ops, for models that learn nothing of
    their own: they read the feature store and the catalogue, which the pipeline keeps current."""

    def recommend_one(self, user_id: str, user_row: dict | None, k: int) -> list[tuple[str, float]]:
        raise NotImplementedError

    def publish_one(self, user_id: str, user_row: dict | None, k: int) -> list[tuple[str, float]]:
        """The list to publish (nothing of it is kept)."""
        return self.recommend_one(user_id, user_row, k)

    def learn_event(self, event: dict, user_row: dict | None) -> None:
        """Nothing to learn beyond the feature store's counts."""

    def observe_catalogue(self, event: dict) -> None:
        """Catalogue changes arrive through the catalogue itself."""

    def refresh(self, now_ms: int, stream_time_ms: int, force: bool = False) -> dict:
        return {}


class CoVisitationRecommender(StatelessRecommender):
    """Scores items for a user from co-visitation and trending (``recommend_one``)."""

    name = "covis-baseline"
    version = "1"

    def __init__(self, covis: CoVisitation, catalogue: Catalogue, trending: Trending,
                 recent_n: int = 10, neighbours_n: int = 50) -> None:
        self.covis = covis
        self.catalogue = catalogue
        self.trending = trending
        self.recent_n = recent_n
        self.neighbours_n = neighbours_n

    def recommend_one(self, user_id: str, user_row: dict | None, k: int) -> list[tuple[str, float]]:
        """Top ``k`` ``(item_id, score)`` for the user whose row is ``user_row`` (None: new user)."""
        seen = user_row["seen"] if user_row else {}
        deleted = self.catalogue.deleted
        scores = covis_scores(self.covis, recent_items(user_row, self.recent_n), self.neighbours_n)
        trending = self.trending.global_list
        n = len(trending) or 1
        for pos, (item, _s) in enumerate(trending):
            scores[item] = scores.get(item, 0.0) + TRENDING_WEIGHT * (1.0 - pos / n)
        candidates = (
            (s, item) for item, s in scores.items() if item not in seen and item not in deleted
        )
        return [(item, s) for s, item in heapq.nlargest(k, candidates)]

    def similar_one(self, item_id: str, k: int) -> list[tuple[str, float]]:
        """Items most co-visited with ``item_id`` (deleted excluded)."""
        deleted = self.catalogue.deleted
        out = [(i, s) for i, s in self.covis.neighbours(item_id, k + 10) if i not in deleted and i != item_id]
        return out[:k]
