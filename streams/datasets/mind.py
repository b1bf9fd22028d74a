"""MIND (Microsoft News Dataset) impression logs as an event stream.

``behaviors.tsv`` (no header): ``impression_id \\t user \\t time \\t history \\t impressions`` with
time like ``11/12/2019 2:14:46 PM`` (read as UTC), history = space-separated news ids (may be
empty) and impressions = ``N123-1 N456-0 ...`` (shown order, label 1 = clicked; the test split
has no labels: ids without ``-label`` count as not clicked).

Each row becomes one ``impression`` (request_id = impression_id, item_ids in shown order) and one
``click`` per clicked item (same request_id, position = index in the slate, ts = impression ts +
1 ms so clicks follow their impression). ``with_history=True`` also emits each user's history
clicks once, just before that user's first impression (ts = first ts - 1 - k for the k-th most
recent). ``news.tsv`` beside it (optional) gives ``item_upsert`` events (category, tags =
[subcategory], text = title + abstract), first in the stream. The interactions are sorted by
event time, ties in file order.

Event ids: ``mind:imp:{impression_id}``, ``mind:click:{impression_id}:{position}``,
``mind:hist:{user}:{k}``, ``mind:news:{news_id}``.
"""

from __future__ import annotations

import calendar
from pathlib import Path
from typing import Iterator

from freshrec.streams.datasets import Dataset
from freshrec.streams.schema import SCHEMA_VERSION


def parse_mind_time(text: str) -> int:
    """``11/12/2019 2:14:46 PM`` -> epoch ms (UTC)."""
    date, clock, ampm = text.strip().split()
    month, day, year = (int(x) for x in date.split("/"))
    hour, minute, second = (int(x) for x in clock.split(":"))
    ampm = ampm.upper()
    if ampm == "PM" and hour != 12:
        hour += 12
    elif ampm == "AM" and hour == 12:
        hour = 0
    return calendar.timegm((year, month, day, hour, minute, second)) * 1000


def find_mind(path: str | Path) -> tuple[Path, Path | None]:
    """(behaviors.tsv, news.tsv or None) for a directory or a behaviors file path."""
    p = Path(path)
    if p.is_dir():
        p = p / "behaviors.tsv"
    if not p.is_file():
        raise FileNotFoundError(f"MIND behaviors file {p} does not exist")
    news = p.parent / "news.tsv"
    return p, (news if news.is_file() else None)


class Mind(Dataset):
    """A MIND copy as an event stream (files located now, parsed on first use)."""

    def __init__(self, path: str | Path, with_history: bool = False) -> None:
        self.behaviors, self.news = find_mind(path)
        self.with_history = with_history
        self.name = f"mind{'+history' if with_history else ''}:{path}"
        self.skipped_rows = 0  # rows without a user or any shown item
        self._parsed: tuple[list[dict], list[dict]] | None = None

    def _read_news(self) -> list[dict]:
        out = []
        if self.news is None:
            return out
        with self.news.open(encoding="utf-8") as fh:
            for line in fh:
                f = line.rstrip("\r\n").split("\t")
                if len(f) < 4 or not f[0].strip():
                    continue
                news_id = f[0].strip()
                title, abstract = f[3].strip(), (f[4].strip() if len(f) > 4 else "")
                event = {"v": SCHEMA_VERSION, "type": "item_upsert", "event_id": f"mind:news:{news_id}",
                         "ts": 0, "item_id": news_id, "tags": [f[2].strip()] if f[2].strip() else [],
                         "text": f"{title} {abstract}".strip()}
                if f[1].strip():
                    event["category"] = f[1].strip()
                out.append(event)
        return out

    def _read_behaviors(self) -> list[dict]:
        events: list[dict] = []
        first_seen: dict[str, tuple[int, list[str]]] = {}  # user -> (first ts, history)
        with self.behaviors.open(encoding="utf-8") as fh:
            for line in fh:
                f = line.rstrip("\r\n").split("\t")
                if len(f) < 5:
                    if line.strip():
                        self.skipped_rows += 1
                    continue
                imp_id, user = f[0].strip(), f[1].strip()
                ts = parse_mind_time(f[2])
                slate, clicked = [], []
                for pos, token in enumerate(f[4].split()):
                    item, sep, label = token.rpartition("-")
                    if not sep or not label.isdigit():  # unlabeled (test split): "N123"
                        item, label = token, "0"
                    slate.append(item)
                    if label == "1":
                        clicked.append(pos)
                if not user or not slate:
                    self.skipped_rows += 1
                    continue
                if self.with_history:
                    prev = first_seen.get(user)
                    if prev is None or ts < prev[0]:
                        first_seen[user] = (ts, f[3].split())
                events.append({"v": SCHEMA_VERSION, "type": "impression", "event_id": f"mind:imp:{imp_id}",
                               "ts": ts, "user_id": user, "request_id": imp_id, "item_ids": slate})
                for pos in clicked:
                    events.append({"v": SCHEMA_VERSION, "type": "click", "event_id": f"mind:click:{imp_id}:{pos}",
                                   "ts": ts + 1, "user_id": user, "item_id": slate[pos], "request_id": imp_id,
                                   "position": pos})
        if self.with_history:
            history = []
            for user, (ts, items) in first_seen.items():
                n = len(items)
                for i, item in enumerate(items):  # oldest first; the most recent lands at ts - 1
                    k = n - 1 - i
                    history.append({"v": SCHEMA_VERSION, "type": "click", "event_id": f"mind:hist:{user}:{k}",
                                    "ts": ts - 1 - k, "user_id": user, "item_id": item})
            # History goes before the impressions in generation order, so on a tie with another
            # user's event (same ms) the stable sort keeps it first.
            events = history + events
        events.sort(key=lambda e: e["ts"])  # stable
        return events

    def _parse(self) -> tuple[list[dict], list[dict]]:
        if self._parsed is None:
            self.skipped_rows = 0
            news = self._read_news()
            interactions = self._read_behaviors()
            first_ts = interactions[0]["ts"] if interactions else 0
            for e in news:
                e["ts"] = first_ts
            self._parsed = (news, interactions)
        return self._parsed

    def _count(self) -> int:
        news, interactions = self._parse()
        return len(news) + len(interactions)

    def __iter__(self) -> Iterator[dict]:
        news, interactions = self._parse()
        # Fresh dicts: consumers (validation, producers) may normalise events in place.
        for e in news:
            yield dict(e)
        for e in interactions:
            yield dict(e)


def load_mind(path: str | Path, with_history: bool = False) -> Iterator[dict]:
    """Events of the MIND copy at ``path`` (a directory or behaviors.tsv).

    Missing files raise FileNotFoundError here, not at the first ``next()``.
    """
    return iter(Mind(path, with_history=with_history))
