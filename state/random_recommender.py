"""A deliberately bad model: random catalogue items. It exists to rehearse a rollback.

Registered as ``kind=random``, it lets an operator (and the tests) check that a challenger whose
lists users do not click is detected by the CTR guardrail and rolled back automatically, with
real traffic, before many users have seen it.
"""

from __future__ import annotations

import numpy as np

from freshrec.state.catalogue import Catalogue
from freshrec.state.recommender import StatelessRecommender


class RandomRecommender(StatelessRecommender):
    """Uniformly random live catalogue items, seen items excluded (same protocol as the others)."""

    name = "random"
    version = "1"

    def __init__(self, catalogue: Catalogue, seed: int = 0) -> None:
        self.catalogue = catalogue
        self.rng = np.random.default_rng(seed)

    def recommend_one(self, user_id: str, user_row: dict | None, k: int) -> list[tuple[str, float]]:
        seen = user_row["seen"] if user_row else {}
        deleted = self.catalogue.deleted
        items = list(self.catalogue.rows)
        if not items:
            return []
        out: list[tuple[str, float]] = []
        for j in self.rng.permutation(len(items))[: 4 * k + 20].tolist():
            item = items[j]
            if item not in seen and item not in deleted:
                out.append((item, round(float(self.rng.random()), 6)))
                if len(out) == k:
                    break
        return out

    def similar_one(self, item_id: str, k: int) -> list[tuple[str, float]]:
        return self.recommend_one(item_id, None, k)
