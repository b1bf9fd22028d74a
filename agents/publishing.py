"""What both worker engines do around a Redis publish: requeue on failure, freshness, stats."""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from freshrec.state.pipeline import Pipeline
from freshrec.state.publisher import Updates

log = logging.getLogger("freshrec.worker")


def _quantiles(values: deque[int]) -> dict[str, int | None]:
    """p50, p99 and count of a window of freshness samples."""
    fresh = sorted(values)

    def q(p: float) -> int | None:
        return fresh[min(len(fresh) - 1, int(p * len(fresh)))] if fresh else None

    return {"p50": q(0.5), "p99": q(0.99), "n": len(fresh)}


class PublishLog:
    """Outcome bookkeeping of the worker's publishes (engine-independent)."""

    def __init__(self, pipeline: Pipeline, window: int = 20000) -> None:
        self.pipeline = pipeline
        self.freshness_ms: deque[int] = deque(maxlen=window)
        self.ranked_freshness_ms: deque[int] = deque(maxlen=window)
        self.redis_errors = 0

    def published(self, updates: Updates) -> None:
        self.freshness_ms.extend(updates.freshness_ms)
        self.ranked_freshness_ms.extend(updates.ranked_freshness_ms)
        self.pipeline.counters["published"] += len(updates.sets)

    def failed(self, updates: Updates, exc: BaseException) -> None:
        """Redis is down: keep consuming; the lists go out again with the next flush."""
        self.redis_errors += 1
        self.pipeline.requeue(updates)
        log.warning("redis publish failed (%s); will retry with the next flush", exc)

    def stats(self, **extra: Any) -> dict[str, Any]:
        p = self.pipeline
        return {**extra, "model": p.model_name, "counters": dict(p.counters),
                "freshness_ms": _quantiles(self.freshness_ms),
                "ranked_freshness_ms": _quantiles(self.ranked_freshness_ms),
                "redis_errors": self.redis_errors, "items": len(p.features.item_stats),
                "users": len(p.features.users)}
