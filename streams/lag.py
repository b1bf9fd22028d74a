"""Consumer-group lag per partition, read from the broker (works when no worker runs)."""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import Consumer, TopicPartition


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int  # next offset the group will read (-1: nothing committed yet)
    end: int  # high watermark
    lag: int


def consumer_lag(brokers: str, group: str, topic: str, timeout_s: float = 10.0) -> list[PartitionLag]:
    """Lag of consumer group ``group`` on every partition of ``topic``."""
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": group, "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s)
        tmeta = meta.topics.get(topic)
        if tmeta is None or tmeta.error is not None:
            raise RuntimeError(f"topic {topic!r} not found on {brokers}")
        tps = [TopicPartition(topic, p) for p in sorted(tmeta.partitions)]
        committed = consumer.committed(tps, timeout=timeout_s)
        out = []
        for tp in committed:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=timeout_s)
            pos = tp.offset if tp.offset >= 0 else low
            out.append(PartitionLag(topic, tp.partition, tp.offset, high, max(0, high - pos)))
        return out
    finally:
        consumer.close()


def total_lag(brokers: str, group: str, topics: list[str], timeout_s: float = 10.0) -> int:
    return sum(p.lag for t in topics for p in consumer_lag(brokers, group, t, timeout_s))
