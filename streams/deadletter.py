"""Dead-letter records: rejected messages kept byte for byte, with why and where from in headers.

The value of a dead-letter message is the *original* bytes, unchanged (even when they are not
JSON or not UTF-8), so a fixed event can be re-sent as is. Everything else is in headers:

=============================== ===============================================================
``freshrec.reason``             short code (:data:`freshrec.streams.schema.REASONS`, or e.g.
                                ``wrong_topic`` from the worker)
``freshrec.detail``             human-readable sentence naming the field and the problem
``freshrec.source.topic``       where the message was read (``stdin`` for ``freshrec produce``)
``freshrec.source.partition``   decimal; -1 when not from Kafka
``freshrec.source.offset``      decimal; the line number for ``stdin``
``freshrec.deadlettered_at``    epoch ms when it was dead-lettered
=============================== ===============================================================
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from freshrec.settings import Settings

HEADER_REASON = "freshrec.reason"
HEADER_DETAIL = "freshrec.detail"
HEADER_SOURCE_TOPIC = "freshrec.source.topic"
HEADER_SOURCE_PARTITION = "freshrec.source.partition"
HEADER_SOURCE_OFFSET = "freshrec.source.offset"
HEADER_DEADLETTERED_AT = "freshrec.deadlettered_at"

DEADLETTER_HEADERS: tuple[str, ...] = (
    HEADER_REASON, HEADER_DETAIL, HEADER_SOURCE_TOPIC, HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_OFFSET, HEADER_DEADLETTERED_AT,
)

MAX_DETAIL_CHARS = 2000  # details quote field names, not payloads; this only bounds the header


def deadletter_record(raw: bytes, reason: str, detail: str, source_topic: str, partition: int,
                      offset: int) -> tuple[bytes, list[tuple[str, bytes]]]:
    """(value, headers) of the dead-letter message for ``raw``: value is ``raw`` unchanged."""
    if len(detail) > MAX_DETAIL_CHARS:
        detail = detail[:MAX_DETAIL_CHARS] + "..."
    headers = [
        (HEADER_REASON, reason.encode()),
        (HEADER_DETAIL, detail.encode("utf-8", "replace")),
        (HEADER_SOURCE_TOPIC, source_topic.encode()),
        (HEADER_SOURCE_PARTITION, str(int(partition)).encode()),
        (HEADER_SOURCE_OFFSET, str(int(offset)).encode()),
        (HEADER_DEADLETTERED_AT, str(time.time_ns() // 1_000_000).encode()),
    ]
    return (bytes(raw) if not isinstance(raw, bytes) else raw), headers


@dataclass(frozen=True)
class DeadLetter:
    """One message read back from the dead-letter topic."""

    reason: str
    detail: str
    source_topic: str
    source_partition: int
    source_offset: int
    deadlettered_at: int
    original: bytes  # the rejected message's value, byte for byte
    key: bytes | None = None
    partition: int = 0  # where this record sits in the dead-letter topic
    offset: int = -1

    @property
    def value(self) -> bytes:
        """Alias of :attr:`original`."""
        return self.original


def _int(raw: bytes | None, default: int) -> int:
    try:
        return int(raw) if raw is not None else default
    except ValueError:
        return default


def parse_deadletter(value: bytes | None, headers: list[tuple[str, bytes]] | None, key: bytes | None = None,
                     partition: int = 0, offset: int = -1) -> DeadLetter:
    """A :class:`DeadLetter` from a message's value and headers (missing headers -> defaults)."""
    h: dict[str, bytes] = {}
    for name, val in headers or ():
        h[name] = val if val is not None else b""
    text = lambda name: h.get(name, b"").decode("utf-8", "replace")  # noqa: E731
    return DeadLetter(
        reason=text(HEADER_REASON), detail=text(HEADER_DETAIL), source_topic=text(HEADER_SOURCE_TOPIC),
        source_partition=_int(h.get(HEADER_SOURCE_PARTITION), -1),
        source_offset=_int(h.get(HEADER_SOURCE_OFFSET), -1),
        deadlettered_at=_int(h.get(HEADER_DEADLETTERED_AT), 0),
        original=value or b"", key=key, partition=partition, offset=offset)


def _watermarks(consumer, tp, deadline: float) -> tuple[int, int]:  # noqa: ANN001
    """(low, high) offsets of ``tp``, retrying while a new partition has no leader yet."""
    from confluent_kafka import KafkaError, KafkaException

    transient = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                 KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._TIMED_OUT}
    while True:
        try:
            return consumer.get_watermark_offsets(tp, timeout=max(1.0, deadline - time.monotonic()))
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if not isinstance(err, KafkaError) or err.code() not in transient or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def read_deadletters(settings: Settings, timeout_s: float = 10, max_messages: int | None = None) -> list[DeadLetter]:
    """Everything currently in the dead-letter topic, oldest first per partition.

    Reads from the beginning with a throwaway consumer (nothing is committed) up to the end
    offsets seen at the start, or until ``timeout_s`` / ``max_messages``. A missing topic reads
    as empty.
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

    topic = settings.deadletter_topic
    consumer = Consumer({
        "bootstrap.servers": settings.kafka_brokers,
        "group.id": f"freshrec-deadletter-reader-{uuid.uuid4().hex}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        "max.partition.fetch.bytes": 16 * 1024 * 1024,
        "fetch.max.bytes": 64 * 1024 * 1024,
    })
    deadline = time.monotonic() + timeout_s
    out: list[DeadLetter] = []
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s)
        tmeta = meta.topics.get(topic)
        if tmeta is None or tmeta.error is not None or not tmeta.partitions:
            return out
        ends: dict[int, int] = {}
        for p in sorted(tmeta.partitions):
            low, high = _watermarks(consumer, TopicPartition(topic, p), deadline)
            if high > low:
                ends[p] = high
        if not ends:
            return out
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        pending = set(ends)
        while pending and time.monotonic() < deadline:
            if max_messages is not None and len(out) >= max_messages:
                break
            batch = consumer.consume(num_messages=500, timeout=min(0.5, max(0.01, deadline - time.monotonic())))
            for msg in batch:
                if msg.error() is not None:
                    continue
                p, off = msg.partition(), msg.offset()
                if p not in pending:
                    continue
                out.append(parse_deadletter(msg.value(), msg.headers(), msg.key(), p, off))
                if off + 1 >= ends[p]:
                    pending.discard(p)
                if max_messages is not None and len(out) >= max_messages:
                    break
            if not batch and pending:
                # Gaps (compaction, transaction markers) can leave the last offset unused:
                # ask where the consumer actually is.
                for tp in consumer.position([TopicPartition(topic, p) for p in pending]):
                    if tp.offset >= 0 and tp.offset >= ends[tp.partition]:
                        pending.discard(tp.partition)
    except KafkaException as exc:
        raise RuntimeError(f"cannot read {topic!r} from {settings.kafka_brokers!r}: {exc}") from exc
    finally:
        consumer.close()
    return out
