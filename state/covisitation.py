"""Item-to-item co-visitation: items a user engaged with close together in time, decayed.

When a user engages with item ``j``, each of their previous ``window`` items ``i`` gets a pair
``(i, j)`` weighted ``1 / distance`` (most recent neighbour counts most) in both directions.
A row is ``{"n": {neighbour: weight}, "t0": ms, "wm": offset}``; weights decay in event time.
Rows keep the strongest ``max_neighbors`` entries (pruned in bulk when they grow 50% past it).
"""

from __future__ import annotations

import heapq
from operator import itemgetter
from typing import Mapping, MutableMapping, Sequence

from freshrec.state.decay import REBASE_EXPONENT, growth, rebase


DROP_LOG_MAX = 1 << 16  # entries of the drop log (CoVisitation.drops_since) before its older half goes
SORT_BELOW = 1500  # below this many entries a full sort beats heapq.nlargest (measured: 3-4x at 60-300)


def strongest(weights: Mapping[str, float], n: int) -> list[tuple[str, float]]:
    """The ``n`` largest ``(key, weight)`` entries, largest first: exactly
    ``heapq.nlargest(n, weights.items(), key=weight)`` (documented to equal the sorted slice, ties
    in insertion order), but through C's sort for the small rows this module holds: nlargest's
    Python loop cost ~20 µs for a 60-entry row, the sort ~5 µs."""
    if len(weights) < SORT_BELOW:
        return sorted(weights.items(), key=itemgetter(1), reverse=True)[:n]
    return heapq.nlargest(n, weights.items(), key=itemgetter(1))


def new_covis_row() -> dict:
    return {"n": {}, "wm": -1}


def pairs_for(new_item: str, previous: Sequence[str], window: int) -> list[tuple[str, float]]:
    """(neighbour, weight) pairs produced by engaging with ``new_item`` after ``previous``."""
    out: list[tuple[str, float]] = []
    distance = 0
    for item in reversed(previous[-window:] if window else previous):
        distance += 1
        if item != new_item:
            out.append((item, 1.0 / distance))
    return out


def add_pairs(row: MutableMapping, pairs: list[tuple[str, float]], ts: int, half_life_ms: float,
              max_neighbors: int) -> None:
    """Add one event's decayed co-visitation weights to ``row``; prune when it grew too large."""
    t0 = row.setdefault("t0", ts)
    exponent = (ts - t0) / half_life_ms
    if exponent > REBASE_EXPONENT:
        rebase(row, ts, half_life_ms, maps=("n",))
        exponent = 0.0
    scale = 2.0**exponent
    n = row["n"]
    get = n.get
    for neighbour, weight in pairs:
        n[neighbour] = get(neighbour, 0.0) + weight * scale
    if len(n) > max_neighbors * 3 // 2:
        row["n"] = dict(strongest(n, max_neighbors))


def add_pair(row: MutableMapping, neighbour: str, weight: float, ts: int, half_life_ms: float,
             max_neighbors: int) -> None:
    """:func:`add_pairs` of a single pair, with the same arithmetic. Most rows an engagement
    changes get one pair (each neighbour's row, its pair back to the engaged item): this skips
    building a list per row and the loop around it."""
    t0 = row.setdefault("t0", ts)
    exponent = (ts - t0) / half_life_ms
    if exponent > REBASE_EXPONENT:
        rebase(row, ts, half_life_ms, maps=("n",))
        exponent = 0.0
    n = row["n"]
    n[neighbour] = n.get(neighbour, 0.0) + weight * 2.0**exponent
    if len(n) > max_neighbors * 3 // 2:
        row["n"] = dict(strongest(n, max_neighbors))


def merge_row(into: MutableMapping, part: MutableMapping, half_life_ms: float) -> None:
    """Add the partial row ``part`` into the merged row ``into``."""
    if not part.get("n"):
        return
    t0 = into.setdefault("t0", part["t0"])
    factor = growth(part["t0"], t0, half_life_ms)
    n = into.setdefault("n", {})
    for k, w in part["n"].items():
        n[k] = n.get(k, 0.0) + w * factor


class CoVisitation:
    """Merged co-visitation graph with cached, normalised top-neighbour lists per item."""

    def __init__(self, half_life_ms: float, max_neighbors: int) -> None:
        self.half_life_ms = half_life_ms
        self.max_neighbors = max_neighbors
        self.rows: dict[str, dict] = {}
        self._top: dict[str, list[tuple[str, float]]] = {}  # normalised top lists, cached
        self._stale: set[str] = set()  # items whose cached list is older than their row
        self._made: dict[str, int] = {}  # item -> when its cached list was made (the last expire_cache's now_ms)
        self._now_ms = 0
        self._maps: dict[str, tuple[int, dict[str, float]]] = {}  # neighbour_map cache: (n, {item: weight})
        # items whose cached list was dropped or replaced, in order: caches derived from the
        # lists (ranking's NeighbourRows) read what changed here instead of asking per item
        self._drops: list[str] = []
        self._drops_base = 0  # log position of _drops[0] (the log's head is trimmed)

    def add(self, item: str, pairs: list[tuple[str, float]], ts: int) -> None:
        """Add one event's ``(neighbour, weight)`` pairs to ``item``'s row."""
        row = self.rows.get(item)
        if row is None:
            row = self.rows[item] = new_covis_row()
        add_pairs(row, pairs, ts, self.half_life_ms, self.max_neighbors)
        self._stale.add(item)

    def add_one(self, item: str, neighbour: str, weight: float, ts: int) -> None:
        """:meth:`add` of a single pair (see :func:`add_pair`)."""
        row = self.rows.get(item)
        if row is None:
            row = self.rows[item] = new_covis_row()
        add_pair(row, neighbour, weight, ts, self.half_life_ms, self.max_neighbors)
        self._stale.add(item)

    def merge(self, item: str, part: MutableMapping) -> None:
        row = self.rows.get(item)
        if row is None:
            row = self.rows[item] = new_covis_row()
        merge_row(row, part, self.half_life_ms)
        self._drop(item)

    def _drop(self, item: str) -> None:
        """Forget ``item``'s cached list (logged when there was one, see :meth:`drops_since`)."""
        if self._top.pop(item, None) is not None:
            self._log_drop(item)
        self._maps.pop(item, None)
        self._made.pop(item, None)

    def _log_drop(self, item: str) -> None:
        drops = self._drops
        drops.append(item)
        if len(drops) > DROP_LOG_MAX:  # readers this far behind start over (drops_since: None)
            half = len(drops) // 2
            del drops[:half]
            self._drops_base += half

    def drops_since(self, position: int) -> tuple[list[str] | None, int]:
        """The items whose cached list was dropped or replaced since ``position`` of the drop
        log, and the log's position now: a derived cache reads it to know which of its entries
        to remake. None instead of the items when the log no longer reaches back that far
        (trimmed, or :meth:`reset_cache`): every entry may have changed. Position 0 is the
        start; a list cached when it was first asked for after its row got entries is not a
        drop (the row had no list to replace)."""
        end = self._drops_base + len(self._drops)
        if position < self._drops_base:
            return None, end
        return self._drops[position - self._drops_base:], end

    def reset_cache(self) -> None:
        """Drop every cached list (the rows were replaced wholesale)."""
        self._top.clear()
        self._maps.clear()
        self._stale.clear()
        self._made.clear()
        self._drops_base += len(self._drops) + 1  # every reader starts over
        self._drops = []

    def expire_cache(self, now_ms: int = 0, min_age_ms: int = 0) -> None:
        """Drop cached lists of items that changed since they were cached, among those cached at
        least ``min_age_ms`` before ``now_ms`` (the others stay marked, for a later call).

        Called once per refresh interval: between calls, reads may use a list that is at most
        one interval old (``min_age_ms`` more for a list made since), which keeps sorting off
        the per-event path (hot items change with nearly every event).
        """
        self._now_ms = now_ms
        made = self._made
        keep: set[str] = set()
        for item in self._stale:
            when = made.get(item)
            if when is not None and now_ms - when < min_age_ms:
                keep.add(item)
                continue
            self._drop(item)
        self._stale = keep

    def neighbours(self, item: str, n: int = 50) -> list[tuple[str, float]]:
        """Strongest ``n`` neighbours of ``item``, weights normalised to sum to 1 (cached, see
        :meth:`expire_cache`).

        Normalising per source item stops popular items' rows from drowning the others when a
        user's recent items are combined. Decay cancels out within a row, so no clock is needed.
        """
        return self.top_list(item, n)[:n]

    def top_list(self, item: str, n: int = 50) -> list[tuple[str, float]]:
        """The cached list behind :meth:`neighbours` (at least ``n`` entries where the row has
        them), not a copy: the same object until the item's row changes and the cache expires,
        so callers can key their own derived data on its identity. Do not mutate it."""
        cached = self._top.get(item)
        if cached is not None and len(cached) >= min(n, len(self.rows.get(item, {}).get("n", ()))):
            return cached
        row = self.rows.get(item)
        if row is None or not row["n"]:
            return []
        top = strongest(row["n"], max(n, 50))
        total = sum(w for _, w in top) or 1.0
        if cached is not None:  # a short list the row has outgrown: replaced
            self._log_drop(item)
        cached = [(k, w / total) for k, w in top]
        self._top[item] = cached
        self._made[item] = self._now_ms
        self._maps.pop(item, None)  # made from the list this one replaces
        return cached

    def neighbour_map(self, item: str, n: int = 50) -> dict[str, float]:
        """:meth:`neighbours` as a dict (cached with the list), to look a few items up in it."""
        cached = self._maps.get(item)
        if cached is not None and cached[0] == n:
            return cached[1]
        weights = dict(self.neighbours(item, n))
        self._maps[item] = (n, weights)
        return weights

    def __len__(self) -> int:
        return len(self.rows)
