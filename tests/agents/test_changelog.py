"""The changelog writer's bookkeeping (no broker needed: delivery reports are fed by hand)."""

from __future__ import annotations

from types import SimpleNamespace

import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException

from freshrec.agents.changelog import ChangelogWriter


def _table(topic: str, data: dict) -> SimpleNamespace:
    return SimpleNamespace(data=data, changelog_topic=SimpleNamespace(get_topic_name=lambda: topic))


class Report:
    def __init__(self, topic: str, key: str, partition: int) -> None:
        self._t, self._k, self._p = topic, orjson.dumps(key), partition

    def topic(self) -> str:
        return self._t

    def key(self) -> bytes:
        return self._k

    def partition(self) -> int:
        return self._p


def test_a_row_whose_write_failed_is_dirty_again_and_the_flush_raises():
    items = _table("app-items-changelog", {"3:m1": {"wm": 7, "c": {"click": 2}}})
    writer = ChangelogWriter("127.0.0.1:1", {"items": items})
    writer.mark("items", {"3:m1": 3})
    writer.dirty["items"].clear()  # as write_dirty leaves it once the row is enqueued
    writer._on_delivery(KafkaError(KafkaError._MSG_TIMED_OUT), Report("app-items-changelog", "3:m1", 3))
    writer._on_delivery(None, Report("app-items-changelog", "3:m2", 3))  # delivered: nothing to redo
    assert writer.dirty["items"] == {"3:m1": 3}
    with pytest.raises(KafkaException, match="not persisted"):
        writer.wait_delivered(timeout_s=0.1)
    assert writer.errors == []  # reported once
