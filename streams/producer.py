"""Producing events: validate, route by type to its topic and key, and count deliveries.

:class:`EventProducer` wraps ``confluent_kafka.Producer`` for high-rate replays: messages are
queued asynchronously, delivery reports are served by ``poll(0)`` every few hundred sends (never
one blocking call per message), and a full local queue is handled by polling and retrying.
Idempotence is on, so broker-side retries cannot duplicate or reorder a partition's events.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from freshrec.settings import Settings
from freshrec.streams.schema import encode_event, validate_event
from freshrec.streams.topics import MAX_MESSAGE_BYTES, topic_and_key

POLL_EVERY = 500  # sends between two non-blocking delivery-report polls


class EventProducer:
    """Sends events to their topics. Use as a context manager (flushes and closes on exit)."""

    def __init__(self, settings: Settings, validate: bool = True, config: dict[str, Any] | None = None) -> None:
        from confluent_kafka import Producer

        self.settings = settings
        self.validate = validate
        self._max_future_ms = int(settings.max_future_s * 1000)
        conf: dict[str, Any] = {
            "bootstrap.servers": settings.kafka_brokers,
            "linger.ms": 5,
            "enable.idempotence": True,
            "message.max.bytes": MAX_MESSAGE_BYTES,  # larger values raise KafkaException in produce()
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "batch.num.messages": 10_000,
            # No compression on purpose: the worker's Kafka client (aiokafka, under Faust) needs
            # extra packages for lz4/snappy/zstd, and loopback/LAN bandwidth is not the bottleneck.
        }
        conf.update(config or {})
        self._producer = Producer(conf)
        self.sent = 0  # accepted into the local queue
        self.delivered = 0
        self.failed = 0
        self.errors: Counter[str] = Counter()  # error name -> count, for failed deliveries
        self.sent_by_topic: Counter[str] = Counter()
        self._since_poll = 0
        self._closed = False

    # ------------------------------------------------------------------ delivery reports
    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.failed += 1
            self.errors[err.name() if hasattr(err, "name") else str(err)] += 1

    def poll(self, timeout: float = 0) -> int:
        """Serve delivery reports (non-blocking by default)."""
        return self._producer.poll(timeout)

    # ------------------------------------------------------------------ sending
    def _produce(self, topic: str, value: bytes, key: bytes | None,
                 headers: list[tuple[str, bytes]] | None = None) -> None:
        if self._closed:
            raise RuntimeError("EventProducer is closed")
        producer = self._producer
        while True:
            try:
                if headers:
                    producer.produce(topic, value, key, on_delivery=self._on_delivery, headers=headers)
                else:
                    producer.produce(topic, value, key, on_delivery=self._on_delivery)
                break
            except BufferError:  # local queue full: let deliveries drain, then retry
                producer.poll(0.1)
        self.sent += 1
        self.sent_by_topic[topic] += 1
        self._since_poll += 1
        if self._since_poll >= POLL_EVERY:
            self._since_poll = 0
            producer.poll(0)

    def send(self, event: dict) -> str:
        """Validate ``event`` (when ``validate``) and queue it on its topic; returns the topic.

        Raises :class:`~freshrec.streams.schema.InvalidEvent` for an invalid event (nothing is
        sent). Validation may fill ``v`` and normalise ``ts`` in ``event`` in place.
        """
        if self.validate:
            validate_event(event, time.time_ns() // 1_000_000, self._max_future_ms)
        topic, key = topic_and_key(event, self.settings)
        self._produce(topic, encode_event(event), key)
        return topic

    def send_raw(self, topic: str, value: bytes, key: bytes | None = None,
                 headers: list[tuple[str, bytes]] | None = None) -> None:
        """Queue ``value`` on ``topic`` as is (no validation), e.g. to test the worker's checks."""
        self._produce(topic, value, key, headers)

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for outstanding deliveries; returns how many are still undelivered."""
        self._since_poll = 0
        return self._producer.flush(timeout)

    @property
    def pending(self) -> int:
        """Messages (and protocol requests) queued locally, not yet acknowledged."""
        return len(self._producer)

    def close(self, timeout: float = 30.0) -> int:
        """Flush, then release the client; returns how many messages were still undelivered.

        Messages not delivered within ``timeout`` are purged (and counted as failed) rather than
        left to block the shutdown for librdkafka's full ``message.timeout.ms``.
        """
        if self._closed:
            return 0
        remaining = self.flush(timeout)
        if remaining:
            self._producer.purge()
            self._producer.flush(1.0)  # serve the purge reports (counted in `failed`)
        closer = getattr(self._producer, "close", None)  # only in recent confluent-kafka releases
        if closer is not None:
            closer()
        self._closed = True
        return remaining

    def __enter__(self) -> "EventProducer":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        remaining = self.close(30.0 if exc_type is None else 5.0)
        if remaining and exc_type is None:
            raise RuntimeError(f"{remaining} messages still undelivered after 30s "
                               f"(is Kafka reachable at {self.settings.kafka_brokers}?)")
        if self.failed and exc_type is None:
            raise RuntimeError(f"{self.failed} of {self.sent} messages were refused by Kafka: {dict(self.errors)}")

    def stats(self) -> dict[str, Any]:
        return {"sent": self.sent, "delivered": self.delivered, "failed": self.failed,
                "errors": dict(self.errors), "sent_by_topic": dict(self.sent_by_topic)}
