"""Replay an event stream (a data set) into Kafka, optionally rate-limited, with progress."""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from freshrec.streams.producer import EventProducer
from freshrec.streams.schema import InvalidEvent

PROGRESS_EVERY = 2000  # events between two progress-bar updates (tqdm is not free per event)
MAX_EXAMPLES = 5


@dataclass
class ReplaySummary:
    """What a replay did."""

    sent_by_type: dict[str, int] = field(default_factory=dict)
    invalid: int = 0
    invalid_by_reason: dict[str, int] = field(default_factory=dict)
    invalid_examples: list[str] = field(default_factory=list)  # first few "reason: detail"
    elapsed_s: float = 0.0
    delivered: int = 0
    failed: int = 0
    undelivered: int = 0  # still queued when the final flush timed out

    @property
    def sent(self) -> int:
        return sum(self.sent_by_type.values())

    @property
    def events_per_s(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def format(self) -> str:
        """A few human-readable lines."""
        types = ", ".join(f"{t} {n:,}" for t, n in sorted(self.sent_by_type.items(), key=lambda kv: -kv[1]))
        lines = [f"replayed {self.sent:,} events in {self.elapsed_s:.1f}s ({self.events_per_s:,.0f} events/s)"
                 + (f": {types}" if types else "")]
        lines.append(f"delivered {self.delivered:,}, failed {self.failed:,}"
                     + (f", still undelivered {self.undelivered:,}" if self.undelivered else ""))
        if self.invalid:
            reasons = ", ".join(f"{r} {n:,}" for r, n in sorted(self.invalid_by_reason.items()))
            lines.append(f"skipped {self.invalid:,} invalid events ({reasons})")
            lines.extend(f"  e.g. {ex}" for ex in self.invalid_examples)
        return "\n".join(lines)


def _total(events: Iterable[dict], limit: int | None) -> int | None:
    total = getattr(events, "total", None)
    if total is None:
        try:
            total = len(events)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if limit is not None:
        total = limit if total is None else min(total, limit)
    return total


def replay(events: Iterable[dict], producer: EventProducer, rate: float | None = None, progress: bool = True,
           limit: int | None = None, flush_timeout: float = 120.0) -> ReplaySummary:
    """Send ``events`` through ``producer``; returns a :class:`ReplaySummary`.

    Invalid events are counted and skipped (the summary shows a few). ``rate`` caps the send
    rate in events/s (the loop sleeps once per small chunk, not per event); ``limit`` caps how
    many events are taken from ``events``. Flushes at the end; the elapsed time includes it.
    """
    if rate is not None and rate <= 0:
        raise ValueError("rate must be > 0 events/s")
    if limit is not None and limit < 0:
        raise ValueError("limit must be >= 0")
    total = _total(events, limit)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="ev", unit_scale=True, file=sys.stderr, mininterval=0.5,
                   desc="replay", dynamic_ncols=True)
    sent_by_type: Counter[str] = Counter()
    invalid: Counter[str] = Counter()
    examples: list[str] = []
    # Rate limiting: check the schedule every `chunk` events (about every 10 ms at the target rate).
    chunk = max(1, int(rate / 100)) if rate else 0
    every = min(PROGRESS_EVERY, chunk * 10) if chunk else PROGRESS_EVERY
    send = producer.send
    delivered0, failed0 = producer.delivered, producer.failed
    taken = 0
    since_bar = 0
    start = time.perf_counter()
    try:
        for event in events:
            if limit is not None and taken >= limit:
                break
            taken += 1
            try:
                send(event)
                sent_by_type[event["type"]] += 1
            except InvalidEvent as exc:
                invalid[exc.reason] += 1
                if len(examples) < MAX_EXAMPLES:
                    examples.append(f"{exc.reason}: {exc.detail}")
            if chunk and taken % chunk == 0:
                ahead = start + taken / rate - time.perf_counter()  # type: ignore[operator]
                if ahead > 0:
                    time.sleep(ahead)
            if bar is not None:
                since_bar += 1
                if since_bar >= every:
                    bar.update(since_bar)
                    since_bar = 0
        if bar is not None and since_bar:
            bar.update(since_bar)
        undelivered = producer.flush(flush_timeout)
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - start
    return ReplaySummary(sent_by_type=dict(sent_by_type), invalid=sum(invalid.values()),
                         invalid_by_reason=dict(invalid), invalid_examples=examples, elapsed_s=elapsed,
                         delivered=producer.delivered - delivered0, failed=producer.failed - failed0,
                         undelivered=undelivered)
