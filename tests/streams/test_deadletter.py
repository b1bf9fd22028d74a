"""Dead-letter records: original bytes kept, headers complete, readable back from Kafka."""

from __future__ import annotations

import time

import pytest

from freshrec.streams.deadletter import (
    DEADLETTER_HEADERS,
    DeadLetter,
    deadletter_record,
    parse_deadletter,
    read_deadletters,
)


def test_record_keeps_original_bytes_and_sets_all_headers():
    raw = b'\xff{"not": json'
    before = time.time_ns() // 1_000_000
    value, headers = deadletter_record(raw, "not_json", "not valid JSON: oops", "fr.interactions", 3, 42)
    assert value == raw
    assert [name for name, _ in headers] == list(DEADLETTER_HEADERS)
    h = dict(headers)
    assert h["freshrec.reason"] == b"not_json"
    assert h["freshrec.detail"] == b"not valid JSON: oops"
    assert h["freshrec.source.topic"] == b"fr.interactions"
    assert h["freshrec.source.partition"] == b"3"
    assert h["freshrec.source.offset"] == b"42"
    assert before <= int(h["freshrec.deadlettered_at"]) <= time.time_ns() // 1_000_000 + 1


def test_parse_round_trip_and_defaults():
    value, headers = deadletter_record(b"x", "oversized", "event is 9 bytes", "stdin", -1, 7)
    dl = parse_deadletter(value, headers, b"k", partition=0, offset=5)
    assert isinstance(dl, DeadLetter)
    assert (dl.reason, dl.detail, dl.source_topic, dl.source_partition, dl.source_offset) == (
        "oversized", "event is 9 bytes", "stdin", -1, 7)
    assert dl.original == dl.value == b"x" and dl.key == b"k" and dl.offset == 5
    empty = parse_deadletter(None, None)
    assert (empty.reason, empty.source_offset, empty.original) == ("", -1, b"")


def test_long_details_are_bounded():
    _, headers = deadletter_record(b"", "bad_value", "x" * 10_000, "t", 0, 0)
    assert len(dict(headers)["freshrec.detail"]) < 2100


@pytest.mark.integration
def test_round_trip_through_kafka(settings):
    from freshrec.streams.producer import EventProducer
    from freshrec.streams.topics import ensure_topics

    ensure_topics(settings)
    assert read_deadletters(settings, timeout_s=10) == []
    big = b'{"pad": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    records = [
        (b"{oops", "not_json", "not valid JSON", settings.interactions_topic, 2, 10),
        (big, "oversized", f"event is {len(big)} bytes", settings.interactions_topic, 0, 11),
        (b'{"type":"click"}', "missing_field", "missing field 'event_id' for type 'click'", "stdin", -1, 3),
    ]
    with EventProducer(settings) as producer:
        for raw, reason, detail, topic, partition, offset in records:
            value, headers = deadletter_record(raw, reason, detail, topic, partition, offset)
            producer.send_raw(settings.deadletter_topic, value, b"user-1", headers)
    assert producer.delivered == 3 and producer.failed == 0
    got = read_deadletters(settings, timeout_s=20)
    assert [(d.original, d.reason, d.detail, d.source_topic, d.source_partition, d.source_offset)
            for d in got] == list(records)
    assert all(d.key == b"user-1" and d.deadlettered_at > 0 for d in got)
    assert len(read_deadletters(settings, max_messages=2)) == 2


@pytest.mark.integration
def test_missing_topic_reads_empty(settings):
    assert read_deadletters(settings.replace(topic_prefix=settings.topic_prefix + "-none"), timeout_s=5) == []
