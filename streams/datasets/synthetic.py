"""A synthetic event stream with planted structure: tests and benchmarks with a known answer.

The world (:func:`make_world`): items belong to categories (balanced) and have a Zipf-like
popularity; each user prefers 1 or 2 categories; user activity is skewed too (a few heavy
users). The stream (:func:`synthetic_events`): ``item_upsert`` for every item first, then
sessions of an ``impression`` slate of up to 10 items (about 3 drawn from the user's preferred
categories, the rest by global popularity, shuffled) followed by the user's reactions:

* ``click`` with probability ~0.30 for a preferred-category item, ~0.02 otherwise (slightly
  decreasing with the position), so the preferred-category CTR is about 10x the rest;
* after a click: ``conversion`` (p 0.1, with a value) and ``rating`` (p 0.05; 4-5 when preferred,
  1-3 otherwise);
* an unclicked non-preferred item is sometimes ``dismiss``-ed (p 0.01).

Deterministic for a given (seed, sizes): same events, same ids. ``ts`` starts at ``start_ms``
(default 2023-11-14T22:13:20Z, fixed so that the stream is reproducible) and advances 1-50 ms per
event; with ``realtime=True`` it is the wall clock when the event is yielded instead (for
freshness measurements: pace the consumer, e.g. ``replay(rate=...)``). ``n_events`` counts the
interaction events; the ``n_items`` catalogue events come on top.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from dataclasses import dataclass
from itertools import accumulate
from typing import Iterator

from freshrec.streams.datasets import Dataset
from freshrec.streams.schema import SCHEMA_VERSION, now_ms

DEFAULT_START_MS = 1_700_000_000_000
SLATE_SIZE = 10
PREFERRED_PER_SLATE = 3
P_CLICK_PREFERRED = 0.30
P_CLICK_OTHER = 0.02
P_CONVERSION = 0.10
P_RATING = 0.05
P_DISMISS = 0.01


@dataclass(frozen=True)
class SyntheticWorld:
    """Ground truth of a synthetic stream: who likes what."""

    seed: int
    item_ids: list[str]
    item_category: list[int]  # category index per item
    category_names: list[str]
    user_ids: list[str]
    user_prefs: list[tuple[int, ...]]  # preferred category indexes per user
    item_cum_weights: list[float]  # popularity (cumulative weights, for random.choices)
    category_items: list[list[int]]  # item indexes per category
    category_cum_weights: list[list[float]]
    user_cum_weights: list[float]

    @property
    def id_prefix(self) -> str:
        return f"syn:{self.seed}:{len(self.user_ids)}:{len(self.item_ids)}:{len(self.category_names)}"

    def category_of(self, item_id: str) -> str:
        return self.category_names[self.item_category[int(item_id[1:])]]

    def preferred_categories(self, user_id: str) -> list[str]:
        return [self.category_names[c] for c in self.user_prefs[int(user_id[1:])]]

    def prefers(self, user_id: str, item_id: str) -> bool:
        """Does ``user_id`` prefer ``item_id``'s category (the planted signal)?"""
        return self.item_category[int(item_id[1:])] in self.user_prefs[int(user_id[1:])]


def make_world(n_users: int = 500, n_items: int = 1000, n_categories: int = 10, seed: int = 0) -> SyntheticWorld:
    """The users, items and preferences behind :func:`synthetic_events` with the same arguments."""
    if n_users < 1 or n_items < 1 or n_categories < 1:
        raise ValueError("synthetic data needs at least 1 user, 1 item and 1 category")
    n_categories = min(n_categories, n_items)
    rng = random.Random(seed)
    cats = [k % n_categories for k in range(n_items)]
    rng.shuffle(cats)
    ranks = list(range(n_items))
    rng.shuffle(ranks)
    weights = [1.0 / (r + 1) ** 0.8 for r in ranks]
    category_items: list[list[int]] = [[] for _ in range(n_categories)]
    for i, c in enumerate(cats):
        category_items[c].append(i)
    prefs = []
    for _ in range(n_users):
        k = 2 if n_categories > 1 and rng.random() < 0.5 else 1
        prefs.append(tuple(sorted(rng.sample(range(n_categories), k))))
    user_ranks = list(range(n_users))
    rng.shuffle(user_ranks)
    return SyntheticWorld(
        seed=seed,
        item_ids=[f"i{i}" for i in range(n_items)],
        item_category=cats,
        category_names=[f"c{c}" for c in range(n_categories)],
        user_ids=[f"u{u}" for u in range(n_users)],
        user_prefs=prefs,
        item_cum_weights=list(accumulate(weights)),
        category_items=category_items,
        category_cum_weights=[list(accumulate(weights[i] for i in items)) for items in category_items],
        user_cum_weights=list(accumulate(1.0 / (r + 1) ** 0.5 for r in user_ranks)),
    )


def synthetic_events(n_users: int = 500, n_items: int = 1000, n_categories: int = 10, n_events: int = 50_000,
                     seed: int = 0, start_ms: int | None = None, realtime: bool = False) -> Iterator[dict]:
    """``n_items`` item_upserts, then ``n_events`` interactions drawn from :func:`make_world`."""
    world = make_world(n_users, n_items, n_categories, seed)
    rng = random.Random(f"events:{seed}")
    prefix = world.id_prefix
    ts = DEFAULT_START_MS if start_ms is None else int(start_ms)
    v = SCHEMA_VERSION
    item_ids, user_ids, item_cat = world.item_ids, world.user_ids, world.item_category
    n_items = len(item_ids)

    def clock() -> int:
        nonlocal ts
        if realtime:
            ts = max(ts, now_ms())
        else:
            ts += 1 + int(rng.random() * 50)
        return ts

    if realtime:
        ts = now_ms()
    for i, item in enumerate(item_ids):
        cat = world.category_names[item_cat[i]]
        yield {"v": v, "type": "item_upsert", "event_id": f"{prefix}:item:{i}", "ts": now_ms() if realtime else ts,
               "item_id": item, "category": cat, "tags": [cat], "text": f"synthetic item {i} about {cat}",
               "created_at": ts - (n_items - i) * 60_000}

    slate_size = min(SLATE_SIZE, n_items)
    # Weighted draws inline (bisect on cumulative weights): random.choices costs ~5x more per call
    # and this loop has to outrun the producer.
    random_ = rng.random
    user_cum, user_total = world.user_cum_weights, world.user_cum_weights[-1]
    item_cum, item_total = world.item_cum_weights, world.item_cum_weights[-1]
    cat_items, cat_cum = world.category_items, world.category_cum_weights
    cat_total = [cum[-1] if cum else 0.0 for cum in cat_cum]
    n_users_ = len(user_ids)
    emitted = 0
    session = 0
    while emitted < n_events:
        u = min(bisect_right(user_cum, random_() * user_total), n_users_ - 1)
        user = user_ids[u]
        prefs = world.user_prefs[u]
        slate: list[int] = []
        chosen: set[int] = set()
        attempts = 0
        while len(slate) < slate_size and attempts < slate_size * 10:
            attempts += 1
            if len(slate) < PREFERRED_PER_SLATE:
                c = prefs[0] if len(prefs) == 1 else prefs[int(random_() * len(prefs))]
                members = cat_items[c]
                i = members[min(bisect_right(cat_cum[c], random_() * cat_total[c]), len(members) - 1)]
            else:
                i = min(bisect_right(item_cum, random_() * item_total), n_items - 1)
            if i not in chosen:
                chosen.add(i)
                slate.append(i)
        rng.shuffle(slate)
        request_id = f"{prefix}:r{session}"
        session += 1
        yield {"v": v, "type": "impression", "event_id": f"{prefix}:{emitted}", "ts": clock(), "user_id": user,
               "request_id": request_id, "item_ids": [item_ids[i] for i in slate], "surface": "home"}
        emitted += 1
        for pos, i in enumerate(slate):
            if emitted >= n_events:
                return
            preferred = item_cat[i] in prefs
            p_click = (P_CLICK_PREFERRED if preferred else P_CLICK_OTHER) / (1.0 + 0.05 * pos)
            r = random_()
            if r < p_click:
                item = item_ids[i]
                yield {"v": v, "type": "click", "event_id": f"{prefix}:{emitted}", "ts": clock(), "user_id": user,
                       "item_id": item, "request_id": request_id, "position": pos}
                emitted += 1
                if emitted < n_events and random_() < P_CONVERSION:
                    yield {"v": v, "type": "conversion", "event_id": f"{prefix}:{emitted}", "ts": clock(),
                           "user_id": user, "item_id": item, "request_id": request_id, "position": pos,
                           "value": round(5.0 + 95.0 * random_(), 2)}
                    emitted += 1
                if emitted < n_events and random_() < P_RATING:
                    yield {"v": v, "type": "rating", "event_id": f"{prefix}:{emitted}", "ts": clock(),
                           "user_id": user, "item_id": item,
                           "value": (4 + int(random_() * 2)) if preferred else (1 + int(random_() * 3))}
                    emitted += 1
            elif not preferred and r > 1.0 - P_DISMISS:
                yield {"v": v, "type": "dismiss", "event_id": f"{prefix}:{emitted}", "ts": clock(), "user_id": user,
                       "item_id": item_ids[i], "request_id": request_id, "position": pos}
                emitted += 1


class SyntheticDataset(Dataset):
    """:func:`synthetic_events` as a :class:`Dataset` (exact ``total``, re-iterable)."""

    def __init__(self, n_users: int = 500, n_items: int = 1000, n_categories: int = 10, n_events: int = 50_000,
                 seed: int = 0, start_ms: int | None = None, realtime: bool = False) -> None:
        self.kwargs = dict(n_users=n_users, n_items=n_items, n_categories=n_categories, n_events=n_events,
                           seed=seed, start_ms=start_ms, realtime=realtime)
        self.name = (f"synthetic:users={n_users},items={n_items},categories={n_categories},"
                     f"events={n_events},seed={seed}")
        self.world = make_world(n_users, n_items, n_categories, seed)  # also fails early on bad sizes

    def _count(self) -> int:
        return len(self.world.item_ids) + max(0, self.kwargs["n_events"])

    def __iter__(self) -> Iterator[dict]:
        return synthetic_events(**self.kwargs)
