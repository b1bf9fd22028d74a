"""The audit trail: every rollout change, by whom and why, on the ``{prefix}.audit`` topic.

Records are JSON objects with at least ``action`` (register, shadow, canary, ab, share,
promote, rollback, applied), ``actor`` (``cli:{user}``, ``guardrail``, ``worker:{app_id}``),
``ts`` (epoch ms) and ``revision`` (the rollout revision it produced or applied), plus what the
change was (models, share, reason, metrics at the time). Keyed by the app id, one partition: the
topic reads in the order things happened.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

import orjson

from freshrec.settings import Settings


def audit_record(action: str, actor: str, **fields: Any) -> dict[str, Any]:
    """One audit record (``ts``: now in epoch ms unless ``fields`` give it)."""
    return {"action": action, "actor": actor, "ts": int(time.time() * 1000), **fields}


def send_audit(settings: Settings, records: Iterable[dict[str, Any]], producer: Any = None,
               timeout_s: float = 10.0) -> int:
    """Produce ``records`` to the audit topic (a producer of the caller's, or a short-lived one);
    raises when the broker did not take them within ``timeout_s``."""
    from confluent_kafka import Producer

    own = producer is None
    p = Producer({"bootstrap.servers": settings.kafka_brokers}) if own else producer
    n = 0
    for rec in records:
        p.produce(settings.audit_topic, key=settings.app_id.encode(), value=orjson.dumps(rec))
        n += 1
    if own and n:
        left = p.flush(timeout_s)
        if left:
            raise RuntimeError(f"{left} audit records not delivered to {settings.audit_topic} "
                               f"within {timeout_s}s (is Kafka up at {settings.kafka_brokers}?)")
    return n


def read_audit(settings: Settings, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """Every record on the audit topic, oldest first (for ``freshrec rollout history`` and tests)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": settings.kafka_brokers, "group.id": f"{settings.app_id}-audit-reader",
                  "enable.auto.commit": False})
    try:
        tp = TopicPartition(settings.audit_topic, 0)
        low, high = c.get_watermark_offsets(tp, timeout=timeout_s)
        if high <= low:
            return []
        tp.offset = low
        c.assign([tp])
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for m in c.consume(500, timeout=0.5):
                if m.error() is None:
                    out.append(orjson.loads(m.value()))
                if m.offset() >= high - 1:
                    return out
        return out
    finally:
        c.close()
