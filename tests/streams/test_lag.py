"""Lag reading: the coordinator's transient errors right after a broker starts are retried."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from freshrec.streams.lag import _committed


class FlakyCoordinator:
    """Answers ``committed`` with ``errors`` first, then the offsets."""

    def __init__(self, errors: list[int]) -> None:
        self.errors = list(errors)
        self.calls = 0

    def committed(self, tps, timeout):
        self.calls += 1
        if self.errors:
            raise KafkaException(KafkaError(self.errors.pop(0)))
        return [TopicPartition(tp.topic, tp.partition, 7) for tp in tps]


def test_not_coordinator_is_retried_until_the_offsets_come():
    c = FlakyCoordinator([KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS])
    out = _committed(c, [TopicPartition("t", 0)], timeout_s=10)
    assert c.calls == 3 and out[0].offset == 7


def test_other_errors_and_the_deadline_still_raise():
    with pytest.raises(KafkaException):
        _committed(FlakyCoordinator([KafkaError.GROUP_AUTHORIZATION_FAILED]), [TopicPartition("t", 0)], 10)
    with pytest.raises(KafkaException):
        _committed(FlakyCoordinator([KafkaError.NOT_COORDINATOR] * 1000), [TopicPartition("t", 0)], 0.5)
