"""Replay: counting, limits, rate limiting and progress (fake producer), and into real Kafka."""

from __future__ import annotations

import time

import pytest

from freshrec.streams.datasets import load_dataset
from freshrec.streams.replay import ReplaySummary, replay
from freshrec.streams.schema import validate_event


class FakeProducer:
    """Duck-typed EventProducer: validates like the real one, remembers what was sent."""

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.delivered = 0
        self.failed = 0
        self.flushes = 0

    def send(self, event: dict) -> str:
        validate_event(event, time.time_ns() // 1_000_000, 86_400_000)
        self.sent.append(event)
        return "t"

    def flush(self, timeout: float = 30.0) -> int:
        self.flushes += 1
        self.delivered = len(self.sent)
        return 0


def events(n: int) -> list[dict]:
    return [{"type": "click", "event_id": f"e{i}", "ts": 1000 + i, "user_id": "u", "item_id": "i"} for i in range(n)]


def test_counts_by_type_and_invalid():
    stream = events(5) + [{"type": "click", "event_id": "bad", "ts": 1}, {"type": "wat"}] + [
        {"type": "item_upsert", "event_id": "c", "ts": 1, "item_id": "i"}]
    producer = FakeProducer()
    summary = replay(stream, producer, progress=False)
    assert summary.sent_by_type == {"click": 5, "item_upsert": 1}
    assert summary.sent == 6 and summary.delivered == 6 and summary.failed == 0
    assert summary.invalid == 2 and summary.invalid_by_reason == {"missing_field": 1, "unknown_type": 1}
    assert summary.invalid_examples[0] == "missing_field: missing field 'user_id' for type 'click'"
    assert producer.flushes == 1
    text = summary.format()
    assert "replayed 6 events" in text and "click 5" in text and "skipped 2 invalid" in text


def test_limit_counts_events_taken():
    producer = FakeProducer()
    summary = replay(iter(events(100)), producer, progress=False, limit=10)
    assert summary.sent == 10 and [e["event_id"] for e in producer.sent] == [f"e{i}" for i in range(10)]
    assert replay(events(3), FakeProducer(), progress=False, limit=0).sent == 0


def test_rate_limit():
    t0 = time.perf_counter()
    summary = replay(events(300), FakeProducer(), rate=1000, progress=False)
    elapsed = time.perf_counter() - t0
    assert summary.sent == 300
    assert 0.25 <= elapsed < 2.0, elapsed
    assert summary.events_per_s < 1300


def test_unlimited_is_fast():
    summary = replay(events(20_000), FakeProducer(), progress=False)
    assert summary.events_per_s > 20_000


def test_progress_bar_goes_to_stderr(capsys):
    replay(load_dataset("synthetic:users=5,items=10,events=3000"), FakeProducer(), progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "3.01k/3.01k" in captured.err or "3010/3010" in captured.err


def test_bad_arguments():
    with pytest.raises(ValueError):
        replay(events(1), FakeProducer(), rate=0, progress=False)
    with pytest.raises(ValueError):
        replay(events(1), FakeProducer(), limit=-1, progress=False)


def test_summary_format_without_events():
    assert "replayed 0 events" in ReplaySummary().format()


@pytest.mark.integration
def test_replay_into_kafka(settings, count_messages):
    from freshrec.streams.producer import EventProducer
    from freshrec.streams.topics import ensure_topics

    ensure_topics(settings)
    ds = load_dataset("synthetic:users=30,items=40,categories=4,events=2000,seed=5")
    with EventProducer(settings) as producer:
        summary = replay(ds, producer, progress=False)
    assert summary.sent == 2040 and summary.delivered == 2040 and summary.failed == 0
    assert summary.sent_by_type["item_upsert"] == 40
    assert count_messages(settings.kafka_brokers, settings.catalogue_topic) == 40
    assert count_messages(settings.kafka_brokers, settings.interactions_topic) == 2000
