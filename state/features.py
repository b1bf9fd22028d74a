"""Online features for the partitions a worker owns, applied exactly once per row.

Three row families are persisted (by the worker, in Faust tables backed by changelog topics):

* ``users[user_id]``: history, seen set, recent event ids (see :mod:`freshrec.state.users`);
* ``items[f"{partition}:{item_id}"]``: that partition's share of an item's stats;
* ``covis[f"{partition}:{item_id}"]``: that partition's share of an item's co-visitation row.

Every row stores ``wm``, the newest source offset folded into it. After a crash the worker
re-reads from the last committed offset and skips, row by row, whatever a row already reflects:
no event is lost and none counted twice, whichever changelog writes made it before the crash.
A resent event (same ``event_id``, new offset) is recognised through the user row's recent ids.

Item-level rows are per-partition partials so that partitions can move between workers; the
merged views (:class:`ItemStats`, :class:`CoVisitation`) are sums over the owned partitions.

A worker that owns every partition and checkpoints its whole state at consistent offsets (the
stream engine) keeps no partials (``partials=False``): the merged views are the state, and the
user row's watermark guards the whole event (every row an event changes is in the same
checkpoint). Each impression and co-visitation pair is then written once instead of twice.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import MutableMapping

from freshrec.settings import Settings
from freshrec.state import covisitation as cv
from freshrec.state import popularity as pop
from freshrec.state import users as us
from freshrec.state.covisitation import CoVisitation
from freshrec.state.popularity import ItemStats

# Interactions that mean "the user engaged with this item": history, co-visitation, seen.
ENGAGEMENTS = frozenset({"click", "conversion", "rating"})
assert "impression" not in pop.POPULARITY_WEIGHTS  # impressions are counted without popularity (add_impressions)


def _covis_targets(item: str, pairs: list[tuple[str, float]]) -> tuple[list[tuple[str, list[tuple[str, float]]]],
                                                                       list[tuple[str, float]]]:
    """Where an engagement's co-visitation pairs go: ``(row item, pairs)`` for the item's own row
    (every pair) and for neighbours that come twice in the window (both weights in one step), and
    ``(neighbour, weight)`` for the usual neighbour that gets a single pair back to ``item``."""
    neighbours = [neighbour for neighbour, _ in pairs]
    if len(set(neighbours)) == len(neighbours):
        return [(item, pairs)], pairs
    back: dict[str, list[tuple[str, float]]] = {}
    for neighbour, weight in pairs:
        back.setdefault(neighbour, []).append((item, weight))
    return [(item, pairs), *back.items()], []


def _slate_counts(item_ids: list[str]) -> dict[str, int]:
    """How often each item is in a slate (an item listed twice counts twice)."""
    return Counter(item_ids) if len(set(item_ids)) != len(item_ids) else dict.fromkeys(item_ids, 1)


def part_key(partition: int, item_id: str) -> str:
    return f"{partition}:{item_id}"


def split_part_key(key: str) -> tuple[int, str]:
    p, _, item = key.partition(":")
    return int(p), item


@dataclass
class Dirty:
    """Rows changed by a batch, to be written once each: ``{key: partition}`` per table."""

    users: dict[str, int] = field(default_factory=dict)
    items: dict[str, int] = field(default_factory=dict)
    covis: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.users) + len(self.items) + len(self.covis)


class FeatureStore:
    """Applies interaction events to persisted rows and keeps merged views current."""

    def __init__(self, settings: Settings, users: MutableMapping[str, dict] | None = None,
                 items: MutableMapping[str, dict] | None = None,
                 covis: MutableMapping[str, dict] | None = None, partials: bool = True) -> None:
        self.settings = settings
        self.partials = partials  # False: no per-partition rows, the merged views are the state
        self.half_life_ms = settings.half_life_s * 1000.0
        self.covis_half_life_ms = settings.covis_half_life_s * 1000.0
        self.users: MutableMapping[str, dict] = {} if users is None else users
        self.item_parts: MutableMapping[str, dict] = {} if items is None else items
        self.covis_parts: MutableMapping[str, dict] = {} if covis is None else covis
        self.item_stats = ItemStats(self.half_life_ms)
        self.covis = CoVisitation(self.covis_half_life_ms, settings.covis_max_neighbors)
        self.stream_time_ms = 0  # newest event time seen: the clock for decay at read time
        self.rebuild()

    # ------------------------------------------------------------------ recovery
    def rebuild(self, partitions: set[int] | None = None) -> None:
        """Recompute merged views from the persisted partial rows (of ``partitions``). Without
        partials the views are the state: they are kept, only their caches are dropped."""
        if not self.partials:
            self.covis.reset_cache()
            self._stream_time_from_users()
            return
        self.item_stats = ItemStats(self.half_life_ms)
        self.covis = CoVisitation(self.covis_half_life_ms, self.settings.covis_max_neighbors)
        for key, row in self.item_parts.items():
            p, item = split_part_key(key)
            if partitions is None or p in partitions:
                self.item_stats.merge(item, row)
        for key, row in self.covis_parts.items():
            p, item = split_part_key(key)
            if partitions is None or p in partitions:
                self.covis.merge(item, row)
        self._stream_time_from_users()

    def _stream_time_from_users(self) -> None:
        for row in self.users.values():
            if row and row.get("last_ts", 0) > self.stream_time_ms:
                self.stream_time_ms = row["last_ts"]

    def item_rows(self) -> dict[str, dict]:
        """The persisted item-level rows, for a checkpoint: the partials, or without them the
        merged item rows."""
        return dict(self.item_parts if self.partials else self.item_stats.rows)

    def covis_rows(self) -> dict[str, dict]:
        """:meth:`item_rows` for co-visitation."""
        return dict(self.covis_parts if self.partials else self.covis.rows)

    def load_rows(self, items: dict[str, dict], covis: dict[str, dict], partials: bool) -> None:
        """Restore :meth:`item_rows` / :meth:`covis_rows` (``partials``: what kind they are).
        Partials load into a store without them by merging (a checkpoint of an older build)."""
        if partials == self.partials:
            if partials:
                self.item_parts.clear(); self.item_parts.update(items)  # noqa: E702
                self.covis_parts.clear(); self.covis_parts.update(covis)  # noqa: E702
                return
            self.item_stats = ItemStats(self.half_life_ms)
            self.item_stats.rows.update(items)
            self.covis = CoVisitation(self.covis_half_life_ms, self.settings.covis_max_neighbors)
            self.covis.rows.update(covis)
            return
        if not partials:
            raise ValueError("these rows hold no per-partition partials; a store that keeps "
                             "partials (partitions that move between workers) cannot load them")
        self.item_stats = ItemStats(self.half_life_ms)
        self.covis = CoVisitation(self.covis_half_life_ms, self.settings.covis_max_neighbors)
        for key, row in items.items():
            self.item_stats.merge(split_part_key(key)[1], row)
        for key, row in covis.items():
            self.covis.merge(split_part_key(key)[1], row)

    # ------------------------------------------------------------------ apply
    def user(self, user_id: str) -> dict | None:
        row = self.users.get(user_id)
        return None if row is None or row.get("deleted") else row

    def is_new(self, event: dict, offset: int) -> bool:
        """True when ``apply`` would fold this interaction into the user's row for the first time
        (not a resent duplicate, not a replay the row already reflects): learning happens once."""
        row = self.users.get(event["user_id"])
        if row is None:
            return True
        if row["wm"] >= offset:
            return False
        return bool(row.get("deleted")) or not us.is_duplicate(row, event["event_id"], offset)

    def apply(self, event: dict, partition: int, offset: int, dirty: Dirty) -> bool:
        """Fold one validated interaction event (from ``partition``/``offset``) into the rows.

        Returns False when the event was skipped whole (a resent duplicate, or a replayed
        deletion already applied).
        """
        s = self.settings
        etype = event["type"]
        user_id = event["user_id"]
        ts = event["ts"]
        if ts > self.stream_time_ms:
            self.stream_time_ms = ts
        if etype == "user_delete":
            return self._delete_user(user_id, partition, offset, dirty)

        urow = self.users.get(user_id)
        if urow is None or urow.get("deleted"):
            urow = us.new_user_row() if urow is None else {**us.new_user_row(), "wm": urow["wm"]}
            self.users[user_id] = urow
        if us.is_duplicate(urow, event["event_id"], offset):
            return False

        user_fresh = urow["wm"] < offset
        if not self.partials:
            if not user_fresh:  # the checkpointed state holds the whole event
                return True
            return self._apply_merged(event, etype, urow, ts, partition, offset, dirty)
        previous = us.history_before(urow, offset)

        if etype == "impression":
            self._add_impressions(event["item_ids"], partition, offset, dirty)
        else:
            item, item_counts = event["item_id"], {etype: 1}
            key = part_key(partition, item)
            prow = self.item_parts.get(key)
            if prow is None:
                prow = self.item_parts[key] = pop.new_item_row()
            if prow["wm"] < offset:
                pop.add_counts(prow, item_counts, ts, self.half_life_ms)
                prow["wm"] = offset
                self.item_stats.add(item, item_counts, ts)
                dirty.items[key] = partition

        if etype in ENGAGEMENTS:
            self._add_covis(event["item_id"], previous, ts, partition, offset, dirty)

        if user_fresh:
            self._update_user(event, etype, urow, ts, partition, offset, dirty)
        return True

    def _update_user(self, event: dict, etype: str, urow: dict, ts: int, partition: int, offset: int,
                     dirty: Dirty) -> None:
        s = self.settings
        if etype in ENGAGEMENTS:
            us.add_history(urow, event["item_id"], ts, offset, s.history_len)
        if etype in ENGAGEMENTS or etype == "dismiss":
            us.mark_seen(urow, event["item_id"], ts, s.seen_max)
        us.remember_event(urow, event["event_id"], offset, s.dedupe_window)
        if ts > urow["last_ts"]:
            urow["last_ts"] = ts
        urow["wm"] = offset
        dirty.users[event["user_id"]] = partition

    def _apply_merged(self, event: dict, etype: str, urow: dict, ts: int, partition: int, offset: int,
                      dirty: Dirty) -> bool:
        """:meth:`apply` without partials, of an event the user row does not hold yet: the
        same changes to the merged views as through the partials, one write each."""
        if etype == "impression":
            self.item_stats.add_impressions(_slate_counts(event["item_ids"]))
        else:
            item = event["item_id"]
            self.item_stats.add(item, {etype: 1}, ts)
            if etype in ENGAGEMENTS:
                pairs = cv.pairs_for(item, [e[0] for e in urow["h"]], self.settings.covis_window)
                if pairs:
                    covis = self.covis
                    rows, singles = _covis_targets(item, pairs)
                    for row_item, row_pairs in rows:
                        covis.add(row_item, row_pairs, ts)
                    add_one = covis.add_one
                    for neighbour, weight in singles:
                        add_one(neighbour, item, weight, ts)
        self._update_user(event, etype, urow, ts, partition, offset, dirty)
        return True

    def _add_impressions(self, item_ids: list[str], partition: int, offset: int, dirty: Dirty) -> None:
        """Count a slate's impressions (an item listed twice counts twice, its row changes once).
        ``pop.add_counts`` inlined: impressions add no popularity, and a slate is ~40% of the
        events and ten items each, the most frequent row update of the stream."""
        counts = _slate_counts(item_ids)
        parts, dirty_items = self.item_parts, dirty.items
        prefix = part_key(partition, "")  # each key is prefix + item (part_key, without a call per item)
        held: list[str] = []  # rows that already hold this offset (a replay after a crash)
        for item, n in counts.items():
            key = prefix + item
            prow = parts.get(key)
            if prow is None:
                prow = parts[key] = pop.new_item_row()
            if prow["wm"] < offset:
                c = prow["c"]
                c["impression"] = c.get("impression", 0) + n
                prow["wm"] = offset
                dirty_items[key] = partition
            else:
                held.append(item)
        if held:
            counts = {item: n for item, n in counts.items() if item not in held}
        self.item_stats.add_impressions(counts)

    def _add_covis(self, item: str, previous: list[str], ts: int, partition: int, offset: int,
                   dirty: Dirty) -> None:
        """Add the event's co-visitation pairs, both directions, each row once per offset."""
        pairs = cv.pairs_for(item, previous, self.settings.covis_window)
        if not pairs:
            return
        hl, cap = self.covis_half_life_ms, self.settings.covis_max_neighbors
        prefix = part_key(partition, "")
        parts, merged = self.covis_parts, self.covis
        rows, singles = _covis_targets(item, pairs)
        for row_item, row_pairs in rows:
            key = prefix + row_item
            row = parts.get(key)
            if row is None:
                row = parts[key] = cv.new_covis_row()
            if row["wm"] >= offset:
                continue
            cv.add_pairs(row, row_pairs, ts, hl, cap)
            merged.add(row_item, row_pairs, ts)
            row["wm"] = offset
            dirty.covis[key] = partition
        add_pair, add_one = cv.add_pair, merged.add_one
        for neighbour, weight in singles:
            key = prefix + neighbour
            row = parts.get(key)
            if row is None:
                row = parts[key] = cv.new_covis_row()
            if row["wm"] >= offset:
                continue
            add_pair(row, item, weight, ts, hl, cap)
            add_one(neighbour, item, weight, ts)
            row["wm"] = offset
            dirty.covis[key] = partition

    def _delete_user(self, user_id: str, partition: int, offset: int, dirty: Dirty) -> bool:
        """Forget a user's personal state; a tombstone keeps only the replay watermark."""
        old = self.users.get(user_id)
        if old is not None and old["wm"] >= offset:
            return False
        self.users[user_id] = {"deleted": True, "wm": offset}
        dirty.users[user_id] = partition
        return True
