"""The topics freshrec uses, how they are configured, and which topic/key each event goes to.

* ``{prefix}.interactions``: interaction events, key = ``user_id`` so one user's events (including
  ``user_delete``) stay ordered on one partition; ``settings.partitions`` partitions.
* ``{prefix}.catalogue``: ``item_upsert`` / ``item_delete``, key = ``item_id``, compacted so the
  topic is the catalogue's latest state; ``settings.partitions`` partitions.
* ``{prefix}.deadletter``: rejected messages, original bytes plus ``freshrec.*`` headers
  (see :mod:`freshrec.streams.deadletter`); 1 partition.
* ``{prefix}.audit``: operational records; 1 partition.

``max.message.bytes`` is raised to 8 MiB on the interactions and dead-letter topics so that an
oversized event reaches the worker (and is dead-lettered with reason ``oversized``) instead of
being refused by the broker where nobody sees it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from freshrec.settings import Settings
from freshrec.streams.schema import CATALOGUE_TYPES, INTERACTION_TYPES, InvalidEvent

MAX_MESSAGE_BYTES = 8 * 1024 * 1024


class TopicMismatch(RuntimeError):
    """An existing topic is incompatible with the settings (e.g. a different partition count)."""


@dataclass(frozen=True)
class TopicSpec:
    """One topic: name, partition count, topic-level config, and the event field used as key."""

    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)
    key_field: str | None = None


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """The four topics for ``settings`` (names from ``settings.topic_prefix``)."""
    big = {"max.message.bytes": str(MAX_MESSAGE_BYTES)}
    return [
        TopicSpec(settings.interactions_topic, settings.partitions, dict(big), "user_id"),
        TopicSpec(settings.catalogue_topic, settings.partitions, {"cleanup.policy": "compact"}, "item_id"),
        TopicSpec(settings.deadletter_topic, 1, dict(big), None),
        TopicSpec(settings.audit_topic, 1, {}, None),
    ]


def topic_and_key(event: dict, settings: Settings) -> tuple[str, bytes]:
    """Where ``event`` goes: (topic, Kafka key) by its type. Raises InvalidEvent when unroutable."""
    etype = event.get("type")
    if etype in INTERACTION_TYPES:
        topic, key_field = settings.interactions_topic, "user_id"
    elif etype in CATALOGUE_TYPES:
        topic, key_field = settings.catalogue_topic, "item_id"
    else:
        raise InvalidEvent("unknown_type", f"unknown event type {etype!r}: no topic for it")
    key = event.get(key_field)
    if type(key) is not str or not key:
        if key is None:
            raise InvalidEvent("missing_field", f"missing field '{key_field}' for type '{etype}'")
        raise InvalidEvent("wrong_type", f"field '{key_field}' for type '{etype}' must be a non-empty string")
    return topic, key.encode()


def _admin(settings: Settings):  # noqa: ANN202 - confluent_kafka types are untyped
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": settings.kafka_brokers})


def _partition_counts(admin, names: list[str], timeout: float) -> tuple[dict[str, int], set[str]]:  # noqa: ANN001
    """(partition count of each existing topic among ``names``, the ones whose partitions all
    have a leader). Missing topics are absent from both."""
    meta = admin.list_topics(timeout=timeout)
    counts, ready = {}, set()
    for name in names:
        t = meta.topics.get(name)
        if t is not None and t.error is None and t.partitions:
            counts[name] = len(t.partitions)
            if all(p.leader >= 0 and p.error is None for p in t.partitions.values()):
                ready.add(name)
    return counts, ready


def ensure_topics(settings: Settings, timeout: float = 30) -> list[str]:
    """Create the missing topics of :func:`topic_specs`; returns the names it created.

    Idempotent and safe to race with another process doing the same (TOPIC_ALREADY_EXISTS is
    fine). Existing keyed topics (interactions, catalogue) must have the expected partition count,
    because keys are hashed to partitions and the worker's tables are co-partitioned with the
    input: on a mismatch this
    raises :class:`TopicMismatch` instead of silently running with a different layout. Waits
    until the created topics show up in the metadata, so producing right after works.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import NewTopic

    specs = topic_specs(settings)
    names = [s.name for s in specs]
    admin = _admin(settings)
    deadline = time.monotonic() + timeout
    try:
        existing, _ = _partition_counts(admin, names, timeout)
    except KafkaException as exc:
        raise RuntimeError(f"cannot reach Kafka at {settings.kafka_brokers!r}: {exc}") from exc
    missing = [s for s in specs if s.name not in existing]
    created = []
    if missing:
        futures = admin.create_topics(
            [NewTopic(s.name, num_partitions=s.partitions, replication_factor=settings.replication_factor,
                      config=dict(s.config)) for s in missing],
            operation_timeout=timeout, request_timeout=timeout)
        for name, fut in futures.items():
            try:
                fut.result(timeout=max(1.0, deadline - time.monotonic()))
                created.append(name)
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue  # someone else created it meanwhile: checked below like any other
                raise RuntimeError(f"could not create topic {name!r}: {exc}") from exc
    # Verify, and wait until what was just created is visible with a leader for every partition
    # (right after creation, produce/fetch/offset requests briefly fail with NOT_LEADER).
    while True:
        counts, ready = _partition_counts(admin, names, max(1.0, deadline - time.monotonic()))
        waiting = [n for n in names if n not in counts or (n in created and n not in ready)]
        if not waiting:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"topics {waiting} still not ready on {settings.kafka_brokers} after {timeout}s")
        time.sleep(0.1)
    # Only keyed topics must match: the layout of the dead-letter / audit topics is cosmetic.
    wrong = [(s, counts[s.name]) for s in specs if s.key_field and counts[s.name] != s.partitions]
    if wrong:
        lines = "; ".join(f"topic {s.name!r} has {n} partitions, expected {s.partitions}" for s, n in wrong)
        raise TopicMismatch(
            f"{lines}. Keys are hashed to partitions, so freshrec will not run on a different layout: "
            f"use a fresh FRESHREC_TOPIC_PREFIX, delete the topics, or set FRESHREC_PARTITIONS to match.")
    return created
