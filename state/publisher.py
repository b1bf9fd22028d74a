"""Redis key layout and publishing of recommendation lists (the frontends' read contract).

Keys (prefix default ``freshrec``), each an orjson document read with one ``GET``:

* ``{p}:recs:{user_id}``: ``{"user_id", "items": [{"item_id", "score"}...], "model" (name-vN),
  "generated_at" (epoch ms), "event_ts" (epoch ms of the newest event reflected), "reflected_at"
  (epoch ms when a list first reflected that event: a quick list's time, kept by the ranked list
  that replaces it), "tier" (``ranked``, or ``quick``: the last ranked list patched with the
  events since, made under overload, see :mod:`freshrec.state.quicklists`), "request_id",
  "arm" (champion | challenger)}``. Frontends put ``request_id`` on the impression of this list
  and on its clicks: that is how online CTR is attributed to the arm and model that served it.
* ``{p}:rollout``: the rollout config (:mod:`freshrec.state.registry`), edited by ``freshrec rollout``;
  ``{p}:models``: hash of registered model specs (``name-vN`` -> spec JSON).
* ``{p}:similar:{item_id}``: ``{"item_id", "items": [...], "model", "generated_at"}``
* ``{p}:trending`` and ``{p}:trending:{category}``: ``{"category", "items": [...], "generated_at"}``

Writes are batched into one non-transactional pipeline per flush; keys get a configurable TTL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import orjson


@dataclass(frozen=True)
class RedisKeys:
    """Builds the key names; the one place that knows the layout."""

    prefix: str = "freshrec"

    def recs(self, user_id: str) -> str:
        return f"{self.prefix}:recs:{user_id}"

    def similar(self, item_id: str) -> str:
        return f"{self.prefix}:similar:{item_id}"

    def trending(self, category: str | None = None) -> str:
        return f"{self.prefix}:trending" if category is None else f"{self.prefix}:trending:{category}"

    def worker_stats(self, app_id: str) -> str:
        return f"{self.prefix}:worker:{app_id}:stats"

    def rollout(self) -> str:
        return f"{self.prefix}:rollout"

    def models(self) -> str:
        return f"{self.prefix}:models"


def _items(scored: Sequence[tuple[str, float]]) -> list[dict[str, Any]]:
    return [{"item_id": item, "score": float(score)} for item, score in scored]


def recs_payload(user_id: str, scored: Sequence[tuple[str, float]], model: str, generated_at: int,
                 event_ts: int, request_id: str | None = None, arm: str = "champion",
                 reflected_at: int | None = None, tier: str = "ranked") -> bytes:
    return orjson.dumps({"user_id": user_id, "items": _items(scored), "model": model,
                         "generated_at": generated_at, "event_ts": event_ts,
                         "reflected_at": generated_at if reflected_at is None else reflected_at,
                         "tier": tier, "request_id": request_id, "arm": arm})


def similar_payload(item_id: str, scored: Sequence[tuple[str, float]], model: str,
                    generated_at: int) -> bytes:
    return orjson.dumps({"item_id": item_id, "items": _items(scored), "model": model,
                         "generated_at": generated_at})


def trending_payload(category: str | None, scored: Sequence[tuple[str, float]],
                     generated_at: int) -> bytes:
    return orjson.dumps({"category": category, "items": _items(scored), "generated_at": generated_at})


@dataclass
class Updates:
    """What one flush writes to Redis: ``sets`` are (key, value) pairs, ``deletes`` key names."""

    sets: list[tuple[str, bytes]] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    recs: int = 0  # how many of the sets are ranked user lists (quick lists: ``quick``)
    users: list[str] = field(default_factory=list)  # whose lists (or deletions) are in here
    similar: list[str] = field(default_factory=list)  # items whose similar lists are in here
    freshness_ms: list[int] = field(default_factory=list)  # first list reflecting a user's newest event: its generated_at - that event's ts
    ranked_freshness_ms: list[int] = field(default_factory=list)  # the same for every ranked list (quick lists left out)
    quick: list[str] = field(default_factory=list)  # users given a quick list (state/quicklists.py), still pending

    def __bool__(self) -> bool:
        return bool(self.sets or self.deletes)


def _pipeline(client: Any, updates: Updates, ttl_s: int) -> Any:
    """A non-transactional pipeline holding every write of ``updates`` (one round trip)."""
    pipe = client.pipeline(transaction=False)
    ex = ttl_s if ttl_s > 0 else None
    for key, value in updates.sets:
        pipe.set(key, value, ex=ex)
    if updates.deletes:
        pipe.delete(*updates.deletes)
    return pipe


async def publish(client: Any, updates: Updates, ttl_s: int) -> None:
    """Write ``updates`` with one pipelined round trip (``client``: ``redis.asyncio.Redis``)."""
    if updates:
        await _pipeline(client, updates, ttl_s).execute()


def publish_sync(client: Any, updates: Updates, ttl_s: int) -> None:
    """:func:`publish` for a blocking client (``redis.Redis``), used by the stream engine."""
    if updates:
        _pipeline(client, updates, ttl_s).execute()
