"""EventProducer: validation and routing, delivery counting, and consuming back what it sent."""

from __future__ import annotations

import orjson
import pytest

from freshrec.settings import Settings
from freshrec.streams import schema
from freshrec.streams.producer import EventProducer
from freshrec.streams.schema import InvalidEvent


def test_invalid_events_raise_before_anything_is_queued():
    producer = EventProducer(Settings(kafka_brokers="127.0.0.1:1"), config={"log_level": 0})
    with pytest.raises(InvalidEvent) as info:
        producer.send({"type": "click", "event_id": "e", "ts": 1, "user_id": 7, "item_id": "i"})
    assert info.value.reason == "wrong_type"
    assert producer.sent == 0 and producer.sent_by_topic == {}


def test_without_validation_unroutable_events_still_raise():
    producer = EventProducer(Settings(kafka_brokers="127.0.0.1:1"), validate=False, config={"log_level": 0})
    with pytest.raises(InvalidEvent):
        producer.send({"type": "nope"})
    producer.send({"type": "click", "user_id": "u"})  # routable: queued as is (the worker will reject it)
    assert producer.sent == 1 and producer.pending >= 1
    assert producer.flush(0) >= 1  # nothing listens on port 1


def test_close_purges_what_cannot_be_delivered():
    import time

    producer = EventProducer(Settings(kafka_brokers="127.0.0.1:1"), config={"log_level": 0})
    producer.send_raw("t.interactions", b"x", b"k")
    t0 = time.monotonic()
    assert producer.close(0.5) == 1
    assert time.monotonic() - t0 < 10
    assert producer.failed == 1 and producer.delivered == 0
    assert producer.close() == 0  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        producer.send_raw("t.interactions", b"y")


def test_context_manager_raises_when_messages_are_lost(monkeypatch):
    producer = EventProducer(Settings(kafka_brokers="127.0.0.1:1"), config={"log_level": 0})
    monkeypatch.setattr(producer, "flush", lambda timeout=30.0: 1)
    with pytest.raises(RuntimeError, match="undelivered"):
        with producer:
            pass


@pytest.mark.integration
def test_send_and_consume_back(settings, consume):
    from freshrec.streams.topics import ensure_topics

    ensure_topics(settings)
    events = [
        schema.item_upsert("i1", category="c", tags=["t"], text="hello", created_at=0),
        schema.impression("u1", "r1", ["i1", "i2"]),
        schema.click("u1", "i1", request_id="r1", position=0),
        schema.conversion("u2", "i2", value=9.5),
        schema.dismiss("u1", "i2"),
        schema.rating("u3", "i1", 4),
        schema.user_delete("u2"),
        schema.item_delete("i2"),
    ]
    sent = [dict(e) for e in events]
    with EventProducer(settings) as producer:
        topics = [producer.send(e) for e in events]
        producer.send_raw(settings.interactions_topic, b"not json at all", None)
    assert topics.count(settings.catalogue_topic) == 2
    assert producer.delivered == 9 and producer.failed == 0
    interactions = consume(settings.kafka_brokers, settings.interactions_topic)
    catalogue = consume(settings.kafka_brokers, settings.catalogue_topic)
    got = {m.value(): m for m in interactions + catalogue}
    for event in sent:
        msg = got[orjson.dumps(event)]
        key_field = "item_id" if event["type"].startswith("item_") else "user_id"
        assert msg.key() == event[key_field].encode()
    assert b"not json at all" in got and got[b"not json at all"].key() is None
    # one user's events share a partition, in order
    u1 = [orjson.loads(m.value())["type"] for m in sorted(interactions, key=lambda m: m.offset())
          if m.key() == b"u1"]
    assert u1 == ["impression", "click", "dismiss"]


@pytest.mark.integration
def test_full_local_queue_is_retried_not_lost(settings, count_messages):
    from freshrec.streams.topics import ensure_topics

    ensure_topics(settings)
    config = {"queue.buffering.max.messages": 50, "linger.ms": 50}
    with EventProducer(settings, config=config) as producer:
        for i in range(2000):
            producer.send(schema.click(f"u{i % 17}", f"i{i}"))
    assert producer.delivered == 2000 and producer.failed == 0
    assert count_messages(settings.kafka_brokers, settings.interactions_topic) == 2000


@pytest.mark.integration
def test_large_raw_payload_is_accepted(settings, consume):
    """A 2 MB value reaches the interactions topic, so the worker can dead-letter it as oversized."""
    from freshrec.streams.topics import ensure_topics

    ensure_topics(settings)
    big = b'{"type":"click","pad":"' + b"x" * (2 * 1024 * 1024) + b'"}'
    with EventProducer(settings) as producer:
        producer.send_raw(settings.interactions_topic, big, b"u1")
    assert producer.delivered == 1
    [msg] = consume(settings.kafka_brokers, settings.interactions_topic)
    assert msg.value() == big
