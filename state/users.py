"""Per-user online state: recent history, bounded seen set, recent event ids (idempotence).

A user row is a JSON-ready dict::

    {"wm": offset,            # newest source offset folded into this row (replay guard)
     "h": [[item, ts, offset], ...],   # last N engaged items, oldest first, ordered by ts
     "seen": {item: ts},      # bounded, insertion ordered; oldest evicted first
     "ids": {event_id: offset},        # recent event ids, bounded (duplicate guard)
     "last_ts": ms}           # newest event time seen for the user

Users are keyed by ``user_id`` and the interactions topic is keyed by user, so a row is only ever
written from one partition and one offset watermark per row is exact.
"""

from __future__ import annotations

import bisect
from typing import MutableMapping


def new_user_row() -> dict:
    return {"wm": -1, "h": [], "seen": {}, "ids": {}, "last_ts": 0}


def is_duplicate(row: MutableMapping, event_id: str, offset: int) -> bool:
    """True when ``event_id`` was already applied from a different offset (a resent event).

    The same event at the same offset is a replay after a crash, not a duplicate: row
    watermarks decide which parts of it are still to be applied.
    """
    first = row["ids"].get(event_id)
    return first is not None and first != offset


def remember_event(row: MutableMapping, event_id: str, offset: int, window: int) -> None:
    ids = row["ids"]
    ids[event_id] = offset
    while len(ids) > window:
        del ids[next(iter(ids))]


def history_before(row: MutableMapping, offset: int) -> list[str]:
    """Items in the user's history that came from offsets before ``offset`` (replay-safe)."""
    return [item for item, _ts, off in row["h"] if off < offset]


def add_history(row: MutableMapping, item: str, ts: int, offset: int, max_len: int) -> None:
    """Insert an engaged item by event time (out-of-order events land in place)."""
    h = row["h"]
    if not h or h[-1][1] <= ts:
        h.append([item, ts, offset])
    else:
        idx = bisect.bisect_right([e[1] for e in h], ts)
        h.insert(idx, [item, ts, offset])
    if len(h) > max_len:
        del h[: len(h) - max_len]


def mark_seen(row: MutableMapping, item: str, ts: int, max_seen: int) -> None:
    seen = row["seen"]
    seen.pop(item, None)
    seen[item] = ts
    while len(seen) > max_seen:
        del seen[next(iter(seen))]


def recent_items(row: MutableMapping | None, n: int) -> list[str]:
    """The user's ``n`` most recent engaged items, newest first."""
    if not row:
        return []
    return [e[0] for e in reversed(row["h"][-n:])]
