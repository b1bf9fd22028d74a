"""Shared fixtures: one real Kafka broker and one real Redis per test session.

Where they come from, first that works:
1. ``FRESHREC_KAFKA_BROKERS`` / ``FRESHREC_REDIS_URL`` from the environment (e.g. CI services);
2. testcontainers, only when a Docker daemon answers a ping;
3. the no-Docker launcher (``freshrec.localinfra``): java + Kafka jars, ``redis-server``,
   under a session tmp dir, stopped at the end of the session.
Nothing is skipped: when no option works the fixture fails and says why.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from freshrec.settings import Settings, load_settings

REPO_ROOT = Path(__file__).resolve().parents[1]


def find_shared_datasets() -> Path | None:
    """``../shared/datasets`` beside the repository (or ``$FRESHREC_DATASETS``), if present."""
    env = os.environ.get("FRESHREC_DATASETS")
    if env:
        return Path(env)
    for parent in (REPO_ROOT, *REPO_ROOT.parents):
        candidate = parent / "shared" / "datasets"
        if candidate.is_dir():
            return candidate
    return None


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The real data sets the project reads (never copied into the repository)."""
    path = find_shared_datasets()
    if path is None:
        pytest.fail(f"no shared data sets: expected ../shared/datasets beside {REPO_ROOT} "
                    f"(or set FRESHREC_DATASETS)", pytrace=False)
    return path


def _docker_answers() -> bool:
    """True when a Docker daemon answers a ping within a couple of seconds."""
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - no docker lib, no socket, daemon down: all mean "no"
        return False


@pytest.fixture(scope="session")
def kafka_brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of a real Kafka broker for the whole session."""
    from_env = os.environ.get("FRESHREC_KAFKA_BROKERS")
    if from_env:
        yield from_env
        return
    errors: list[str] = []
    if _docker_answers():
        try:
            try:
                from testcontainers.community.kafka import KafkaContainer
            except ImportError:
                from testcontainers.kafka import KafkaContainer
            container = (KafkaContainer().with_kraft()
                         .with_env("KAFKA_MESSAGE_MAX_BYTES", "8388608")
                         .with_env("KAFKA_REPLICA_FETCH_MAX_BYTES", "8388608"))
            container.start()
        except Exception as exc:  # noqa: BLE001 - fall back to the launcher
            errors.append(f"testcontainers Kafka: {exc!r}")
        else:
            try:
                yield container.get_bootstrap_server()
            finally:
                container.stop()
            return
    from freshrec.localinfra.kafka import KafkaBroker

    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"))
    try:
        broker.start(timeout=120)
    except Exception as exc:  # noqa: BLE001 - report every attempt below
        errors.append(f"local launcher (freshrec.localinfra.KafkaBroker): {exc}")
    else:
        try:
            yield broker.bootstrap
        finally:
            broker.stop()
        return
    pytest.fail("no Kafka broker for the integration tests. Set FRESHREC_KAFKA_BROKERS, run a "
                "Docker daemon, or install Java 17 + Maven (then `freshrec dev fetch`).\n"
                + "\n".join(errors), pytrace=False)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real Redis for the whole session."""
    from_env = os.environ.get("FRESHREC_REDIS_URL")
    if from_env:
        yield from_env
        return
    errors: list[str] = []
    if _docker_answers():
        try:
            try:
                from testcontainers.community.redis import RedisContainer
            except ImportError:
                from testcontainers.redis import RedisContainer
            container = RedisContainer("redis:7")
            container.start()
        except Exception as exc:  # noqa: BLE001 - fall back to the launcher
            errors.append(f"testcontainers Redis: {exc!r}")
        else:
            try:
                host = container.get_container_host_ip()
                yield f"redis://{host}:{container.get_exposed_port(6379)}/0"
            finally:
                container.stop()
            return
    from freshrec.localinfra.redis import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        server.start()
    except Exception as exc:  # noqa: BLE001 - report every attempt below
        errors.append(f"local launcher (freshrec.localinfra.RedisServer): {exc}")
    else:
        try:
            yield server.url
        finally:
            server.stop()
        return
    pytest.fail("no Redis for the integration tests. Set FRESHREC_REDIS_URL, run a Docker "
                "daemon, or install redis-server (apt-get install -y redis-server).\n"
                + "\n".join(errors), pytrace=False)


@pytest.fixture
def settings(kafka_brokers: str, redis_url: str) -> Settings:
    """Settings pointing at the session services, with names unique to this test.

    ``topic_prefix``, ``app_id`` (consumer group) and ``redis_prefix`` are ``t<8 hex>``, so
    tests never see each other's topics, offsets or keys.
    """
    name = f"t{uuid.uuid4().hex[:8]}"
    return load_settings(kafka_brokers=kafka_brokers, redis_url=redis_url,
                         topic_prefix=name, app_id=name, redis_prefix=name)
