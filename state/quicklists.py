"""Quick lists: a user's last ranked list patched with what he did since, for overload.

One worker ranks ~1,000-1,500 users a second on a core (README, benchmark). When more users than
that are active, the flush's time budget leaves some waiting, newest first; before this module
they kept a list that missed their newest events until the load dropped (10-30 s at 5k events/s).
A quick list is what a serving layer does at read time, done at write time instead: the user's
last ranked list with the items he engaged with or dismissed since taken out, and the co-visitation
neighbours of the items he engaged with since put in (a few slots, ``quick_related``). It costs a
few dict lookups, not a ranking (no ANN, no features, no click model), so every waiting user gets
one in the same flush; the user stays queued for a ranked list, which replaces it when the budget
allows. The published document says which it is (``"tier"``: ``ranked`` or ``quick``).

What it does not reflect: the MF and click-model updates of those events, new ANN candidates, and
changes to other items' scores. ``freshrec eval --methods freshrec:ranked_every_s=N`` measures the
quality of serving quick lists between ranked lists at most N seconds of stream time apart.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Container, Mapping, Sequence

NEW_ITEMS_MAX = 5  # a quick list follows at most this many of the newest engagements
SERVED_MAX = 100_000  # users whose last ranked list is kept in memory (least recently listed dropped)


@dataclass(slots=True)
class Served:
    """What the worker last published for a user.

    ``ranked``: the last ranked list, ``(item, score)`` best first (the base of quick lists;
    empty for a user not ranked yet, whose quick lists patch the trending list); ``base_wm``: the user
    row's offset watermark that list reflected; ``reflected_wm``/``reflected_at``: the watermark
    the newest published list (ranked or quick) reflected and when a list first reflected it
    (``None``: that publish failed); ``arm``/``label``: which rollout arm and model ranked it."""

    ranked: Sequence[tuple[str, float]]
    base_wm: int
    arm: str
    label: str
    reflected_wm: int
    reflected_at: int | None


class ServedLists:
    """The last published list per user, bounded (least recently listed users dropped first)."""

    def __init__(self, max_users: int = SERVED_MAX) -> None:
        self.max_users = max_users
        self._rows: OrderedDict[str, Served] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, user_id: str) -> Served | None:
        return self._rows.get(user_id)

    def put(self, user_id: str, served: Served) -> None:
        rows = self._rows
        rows[user_id] = served
        rows.move_to_end(user_id)
        while len(rows) > self.max_users:
            rows.popitem(last=False)

    def forget(self, user_id: str) -> None:
        """A deleted user's list goes with him (privacy)."""
        self._rows.pop(user_id, None)

    def clear(self) -> None:
        self._rows.clear()


def engaged_since(row: Mapping | None, wm: int, n: int = NEW_ITEMS_MAX) -> list[str]:
    """The newest ``n`` items the user engaged with from offsets after ``wm``, newest first
    (``row["h"]`` holds ``[item, ts, offset]`` ordered by event time; offsets tell what came
    after a list even when timestamps tie, as MovieLens' seconds do)."""
    if not row:
        return []
    out = []
    for item, _ts, offset in reversed(row["h"]):
        if offset > wm:
            out.append(item)
            if len(out) >= n:
                break
    return out


def quick_list(base: Sequence[tuple[str, float]], new_items: Sequence[str], seen: Container[str],
               deleted: Container[str], neighbours: Callable[[str, int], Sequence[tuple[str, float]]],
               score_of: Callable[[str], float], k: int, related: int) -> list[tuple[str, float]]:
    """``base`` (the last ranked list, best first) without ``seen`` and ``deleted`` items, with up
    to ``related`` co-visitation neighbours of ``new_items`` (the items engaged with since,
    newest first) in every other slot from the second, the strongest first; ``k`` long at most.

    A neighbour's weight is summed over the new items (each item's row is normalised, see
    :meth:`~freshrec.state.covisitation.CoVisitation.neighbours`), ties in the order met. Its score
    is ``score_of(item)`` (the item's CTR: no click model ran), a kept item keeps its ranked score.
    """
    kept = [(item, score) for item, score in base if item not in seen and item not in deleted]
    picked: list[str] = []
    if related > 0 and new_items:
        weights: dict[str, float] = {}
        listed = {item for item, _ in kept}
        for item in new_items:
            for other, w in neighbours(item, related + len(kept)):
                if other in seen or other in deleted or other in listed:
                    continue
                weights[other] = weights.get(other, 0.0) + w
        picked = sorted(weights, key=weights.__getitem__, reverse=True)[:related]
        kept = kept[: max(k - len(picked), 0)]
    out: list[tuple[str, float]] = []
    fresh = iter(picked)
    for n, entry in enumerate(kept):
        out.append(entry)
        if n < len(picked):
            item = next(fresh)
            out.append((item, score_of(item)))
    out.extend((item, score_of(item)) for item in fresh)  # when few were kept
    return out[:k]
