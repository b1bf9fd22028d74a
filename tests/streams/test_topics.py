"""Topic layout, routing, and ensure_topics against a real broker."""

from __future__ import annotations

import pytest

from freshrec.settings import Settings
from freshrec.streams.schema import EVENT_TYPES, InvalidEvent, make_event
from freshrec.streams.topics import TopicMismatch, TopicSpec, ensure_topics, topic_and_key, topic_specs

S = Settings(topic_prefix="fr", partitions=6)


def test_topic_specs():
    specs = {s.name: s for s in topic_specs(S)}
    assert specs == {
        "fr.interactions": TopicSpec("fr.interactions", 6, {"max.message.bytes": "8388608"}, "user_id"),
        "fr.catalogue": TopicSpec("fr.catalogue", 6, {"cleanup.policy": "compact"}, "item_id"),
        "fr.deadletter": TopicSpec("fr.deadletter", 1, {"max.message.bytes": "8388608"}, None),
        "fr.audit": TopicSpec("fr.audit", 1, {}, None),
    }


@pytest.mark.parametrize("etype", sorted(EVENT_TYPES))
def test_topic_and_key(etype):
    event = make_event(etype, user_id="u1", item_id="i1")
    topic, key = topic_and_key(event, S)
    if etype in ("item_upsert", "item_delete"):
        assert (topic, key) == ("fr.catalogue", b"i1")
    else:
        assert (topic, key) == ("fr.interactions", b"u1")


def test_topic_and_key_errors():
    with pytest.raises(InvalidEvent) as info:
        topic_and_key({"type": "nope"}, S)
    assert info.value.reason == "unknown_type"
    with pytest.raises(InvalidEvent) as info:
        topic_and_key({"type": "click"}, S)
    assert info.value.reason == "missing_field"
    with pytest.raises(InvalidEvent) as info:
        topic_and_key({"type": "item_delete", "item_id": 5}, S)
    assert info.value.reason == "wrong_type"


def _describe(settings: Settings) -> tuple[dict, dict]:
    from confluent_kafka.admin import AdminClient, ConfigResource

    admin = AdminClient({"bootstrap.servers": settings.kafka_brokers})
    meta = admin.list_topics(timeout=10)
    names = [s.name for s in topic_specs(settings)]
    partitions = {n: len(meta.topics[n].partitions) for n in names}
    futures = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, n) for n in names])
    configs = {res.name: {k: v.value for k, v in fut.result(timeout=10).items()} for res, fut in futures.items()}
    return partitions, configs


@pytest.mark.integration
def test_ensure_topics_creates_and_is_idempotent(settings):
    settings = settings.replace(partitions=3)
    created = ensure_topics(settings)
    assert sorted(created) == sorted(s.name for s in topic_specs(settings))
    partitions, configs = _describe(settings)
    assert partitions == {settings.interactions_topic: 3, settings.catalogue_topic: 3,
                          settings.deadletter_topic: 1, settings.audit_topic: 1}
    assert configs[settings.catalogue_topic]["cleanup.policy"] == "compact"
    assert configs[settings.interactions_topic]["cleanup.policy"] == "delete"
    assert configs[settings.interactions_topic]["max.message.bytes"] == "8388608"
    assert configs[settings.deadletter_topic]["max.message.bytes"] == "8388608"
    assert ensure_topics(settings) == []


@pytest.mark.integration
def test_ensure_topics_refuses_a_partition_mismatch(settings):
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": settings.kafka_brokers})
    admin.create_topics([NewTopic(settings.interactions_topic, num_partitions=2)])[
        settings.interactions_topic].result(timeout=30)
    with pytest.raises(TopicMismatch) as info:
        ensure_topics(settings.replace(partitions=4))
    message = str(info.value)
    assert settings.interactions_topic in message and "has 2 partitions, expected 4" in message
    with pytest.raises(TopicMismatch, match="catalogue' has 4 partitions, expected 2"):
        ensure_topics(settings.replace(partitions=2))  # the catalogue was created with 4 meanwhile
