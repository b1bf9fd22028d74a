"""Consumer-group lag per partition, read from the broker (works when no worker runs)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

# The group coordinator moving or still loading (a broker just started): ask again.
RETRY_CODES = frozenset({KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                         KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError._TIMED_OUT})


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
        committed = _committed(consumer, tps, timeout_s)
        out = []
        for tp in committed:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=timeout_s)
            pos = tp.offset if tp.offset >= 0 else low
            out.append(PartitionLag(topic, tp.partition, tp.offset, high, max(0, high - pos)))
        return out
    finally:
        consumer.close()


def _committed(consumer: Consumer, tps: list[TopicPartition], timeout_s: float) -> list[TopicPartition]:
    """The group's committed offsets, retrying the coordinator's transient errors until the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return consumer.committed(tps, timeout=max(1.0, deadline - time.monotonic()))
        except KafkaException as exc:
            err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if err is None or err.code() not in RETRY_CODES or time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def total_lag(brokers: str, group: str, topics: list[str], timeout_s: float = 10.0) -> int:
    return sum(p.lag for t in topics for p in consumer_lag(brokers, group, t, timeout_s))
