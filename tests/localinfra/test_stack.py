"""The no-Docker local infrastructure: a real Kafka broker and redis-server."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from freshrec.localinfra._proc import process_matches
from freshrec.localinfra.cli import dev
from freshrec.localinfra.kafka import fetch_kafka
from freshrec.localinfra.redis import RedisServer, find_redis_server
from freshrec.localinfra.stack import DevStack, free_port

BIG = 2 * 1024 * 1024  # the input contract dead-letters payloads this large: Kafka must take them


def _create_topic(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, num_partitions=1,
                                                replication_factor=1)]).values():
        future.result(timeout=30)


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    errors: list[KafkaError] = []
    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 8 * 1024 * 1024,
                         "enable.idempotence": True, "linger.ms": 5})
    for value in values:
        producer.produce(topic, value=value,
                         on_delivery=lambda err, _msg: errors.append(err) if err else None)
    assert producer.flush(timeout=30) == 0, "messages still queued after 30 s"
    assert not errors, errors


def _consume(bootstrap: str, topic: str, count: int, timeout: float = 30) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(topic, 0, 0)])
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            got.append(msg.value())
    finally:
        consumer.close()
    return got


# --- fast checks, no servers


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_missing_tools_give_install_hints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from freshrec.localinfra._proc import LocalInfraError

    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(LocalInfraError, match="redis-server"):
        find_redis_server()
    with pytest.raises(LocalInfraError, match="openjdk-17"):
        fetch_kafka(tmp_path / "cache")
    (empty / "java").symlink_to("/bin/true")  # java present, mvn missing
    with pytest.raises(LocalInfraError, match="apt-get install -y maven"):
        fetch_kafka(tmp_path / "cache")


def test_status_of_a_stack_that_never_ran(tmp_path: Path) -> None:
    result = CliRunner().invoke(dev, ["status", "--json", "--home", str(tmp_path / "dev")])
    assert result.exit_code == 1, result.output
    info = json.loads(result.output)
    assert info["kafka"]["running"] is False and info["redis"]["answering"] is False


# --- real servers


@pytest.mark.integration
def test_broker_answers_metadata_and_round_trips(kafka_brokers: str) -> None:
    metadata = AdminClient({"bootstrap.servers": kafka_brokers}).list_topics(timeout=10)
    assert metadata.brokers, "metadata lists no broker"
    topic = f"t{uuid.uuid4().hex[:8]}.roundtrip"
    _create_topic(kafka_brokers, topic)
    values = [f"event-{i}".encode() for i in range(20)] + [b"x" * BIG]
    _produce(kafka_brokers, topic, values)
    assert _consume(kafka_brokers, topic, len(values)) == values


@pytest.mark.integration
def test_stack_restart_on_same_data_dir_keeps_messages(tmp_path: Path) -> None:
    home = tmp_path / "dev"
    runner = CliRunner()
    result = runner.invoke(dev, ["up", "--json", "--home", str(home)])
    assert result.exit_code == 0, result.output
    first = json.loads(result.output)
    stack = DevStack(home)
    try:
        assert json.loads(stack.services_file.read_text()) == first
        again = stack.up()  # idempotent: keeps the running services
        assert (again["kafka_pid"], again["redis_pid"]) == (first["kafka_pid"], first["redis_pid"])
        status = stack.status()
        assert status["kafka"]["answering"] and status["redis"]["answering"], status

        bootstrap = first["kafka_brokers"]
        topic = "keep.me"
        _create_topic(bootstrap, topic)
        values = [f"kept-{i}".encode() for i in range(50)]
        _produce(bootstrap, topic, values)

        result = runner.invoke(dev, ["down", "--home", str(home)])
        assert result.exit_code == 0, result.output
        assert not stack.services_file.exists()
        for pid in (first["kafka_pid"], first["redis_pid"]):
            assert not process_matches(pid, ()), f"pid {pid} still alive after down"
        assert not stack.status()["kafka"]["running"]

        second = DevStack(home).up()
        assert second["kafka_brokers"] == bootstrap  # same ports: clients' config stays valid
        assert second["kafka_pid"] != first["kafka_pid"]
        assert _consume(bootstrap, topic, len(values)) == values
    finally:
        stack.down()
    assert not stack.status()["kafka"]["running"]


@pytest.mark.integration
def test_redis_ping_and_stop(redis_url: str, tmp_path: Path) -> None:
    assert redis.Redis.from_url(redis_url).ping()

    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        client = redis.Redis.from_url(server.url, socket_timeout=2)
        assert client.ping()
        client.set("k", "v")
        assert client.get("k") == b"v"
        pid = server.pid
        assert pid and RedisServer(tmp_path / "redis").pid == pid  # found again from its files
    finally:
        assert server.stop() is True
    assert server.pid is None and not process_matches(pid, ())
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(server.url, socket_connect_timeout=1).ping()
    assert os.path.exists(server.log_path)


@pytest.mark.integration
def test_settings_fixture_is_unique_per_test(settings, kafka_brokers: str, redis_url: str) -> None:
    assert (settings.kafka_brokers, settings.redis_url) == (kafka_brokers, redis_url)
    assert settings.topic_prefix == settings.app_id == settings.redis_prefix
    assert settings.topic_prefix.startswith("t") and len(settings.topic_prefix) == 9
    assert settings.interactions_topic == f"{settings.topic_prefix}.interactions"
