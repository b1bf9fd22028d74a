"""Fixtures of the event-contract tests: where the real data sets are, Kafka helpers."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]



def consume_all(brokers: str, topic: str, timeout_s: float = 20.0) -> list:
    """Every message currently in ``topic`` (all partitions, from the beginning)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": brokers, "group.id": f"test-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
        ends = {}
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        out = []
        deadline = time.monotonic() + timeout_s
        while ends and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=0.5):
                if msg.error() is None:
                    out.append(msg)
                    if msg.offset() + 1 >= ends.get(msg.partition(), 0):
                        ends.pop(msg.partition(), None)
        assert not ends, f"timed out reading {topic}: partitions {sorted(ends)} incomplete"
        return out
    finally:
        consumer.close()


def message_count(brokers: str, topic: str) -> int:
    """Messages in ``topic`` (sum of high - low watermarks)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": brokers, "group.id": f"test-{uuid.uuid4().hex}"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        total = 0
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


@pytest.fixture
def consume():
    """``consume(brokers, topic)``: every message in a topic (see :func:`consume_all`)."""
    return consume_all


@pytest.fixture
def count_messages():
    """``count_messages(brokers, topic)``: sum of high - low watermarks."""
    return message_count
