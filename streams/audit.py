"""The audit trail: every rollout change, by whom and why, on the ``{prefix}.audit`` topic.

Records are JSON objects with at least ``action`` (register, shadow, canary, ab, share,
promote, rollback, applied), ``actor`` (``cli:{user}``, ``guardrail``, ``worker:{app_id}``),
``ts`` (epoch ms) and ``revision`` (the rollout revision it produced or applied), plus what the
change was (models, share, reason, metrics at the time). Keyed by the app id, one partition.
Several writers share the topic (the CLI stores a config in Redis before it produces its record,
so a quick worker's ``applied`` can land first): :func:`read_audit` returns records in causal order.
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


def in_causal_order(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``records`` (in topic order) ordered by the rollout revision they produced or applied, and
    within a revision the change before the workers' ``applied``; records without a revision
    (``register``) keep their place after the revision seen before them."""
    keyed = []
    last = 0
    for i, rec in enumerate(records):
        rev = rec.get("revision")
        follows = not isinstance(rev, int) or rec.get("action") == "applied"  # a revision's change comes first
        if isinstance(rev, int):
            last = max(last, rev)
        else:
            rev = last
        keyed.append(((rev, follows, i), rec))
    return [rec for _, rec in sorted(keyed, key=lambda kv: kv[0])]


def read_audit(settings: Settings, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """Every record on the audit topic, in causal order (:func:`in_causal_order`), for
    ``freshrec rollout history`` and tests."""
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
                    return in_causal_order(out)
        return in_causal_order(out)
    finally:
        c.close()
