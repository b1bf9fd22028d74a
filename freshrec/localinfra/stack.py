"""The local dev stack: one Kafka broker and one redis-server, managed as a unit.

``DevStack.up()`` starts both (or keeps them when already running) and writes their addresses
to ``<home>/services.json``; :func:`freshrec.settings.load_settings` reads that file, so every
``freshrec`` command finds the local services without any environment variables.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable

from freshrec import settings as _settings
from freshrec.localinfra._proc import LocalInfraError, file_lock, free_port, read_json, write_json
from freshrec.localinfra.kafka import KAFKA_VERSION, KafkaBroker, fetch_kafka
from freshrec.localinfra.redis import RedisServer

__all__ = ["DevStack", "LocalInfraError", "default_home", "free_port"]


def default_home() -> Path:
    """``<state_dir>/dev`` (``.freshrec/dev`` unless ``FRESHREC_HOME`` says otherwise)."""
    return _settings.state_dir() / "dev"


def _or_none(get: Callable[[], str]) -> str | None:
    try:
        return get()
    except LocalInfraError:  # never started: no port yet
        return None


class DevStack:
    """Kafka (``<home>/kafka``) + Redis (``<home>/redis``) + ``<home>/services.json``."""

    def __init__(self, home: Path | None = None, *, cache_dir: Path | None = None) -> None:
        self.home = Path(home).resolve() if home is not None else default_home()
        self.cache_dir = cache_dir
        self.kafka = KafkaBroker(self.home / "kafka", cache_dir=cache_dir)
        self.redis = RedisServer(self.home / "redis")

    @property
    def services_file(self) -> Path:
        """The JSON with the services' addresses (``settings.dev_services_file()`` by default)."""
        return self.home / "services.json"

    def up(self, timeout: float = 90) -> dict[str, Any]:
        """Start whatever is not running and answering; write and return the services JSON.

        Idempotent: services already running on this home are kept (same pids and ports).
        """
        with file_lock(self.home / ".lock"):
            fetch_kafka(self.cache_dir)
            kafka_was_running = self.kafka.is_running()
            self.kafka.start(timeout=timeout)
            try:
                self.redis.start(timeout=min(timeout, 30))
            except BaseException:
                if not kafka_was_running:  # do not leave half a stack behind
                    self.kafka.stop()
                raise
            info = {
                "kafka_brokers": self.kafka.bootstrap,
                "redis_url": self.redis.url,
                "kafka_pid": self.kafka.pid,
                "redis_pid": self.redis.pid,
                "kafka_version": KAFKA_VERSION,
                "kafka_data_dir": str(self.kafka.data_dir),
                "kafka_log": str(self.kafka.log_path),
                "redis_log": str(self.redis.log_path),
                "home": str(self.home),
                "started_at": read_json(self.services_file).get("started_at")
                if kafka_was_running else time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            write_json(self.services_file, info)
            return info

    def down(self, timeout: float = 30, purge: bool = False) -> dict[str, bool]:
        """Stop both services and remove ``services.json``; returns which were running.

        Kafka's data stays for the next ``up`` unless ``purge`` (then ``home`` is deleted).
        """
        with file_lock(self.home / ".lock"):
            stopped = {"kafka": self.kafka.stop(timeout=timeout),
                       "redis": self.redis.stop(timeout=min(timeout, 10))}
            self.services_file.unlink(missing_ok=True)
        if purge:
            shutil.rmtree(self.home, ignore_errors=True)
        return stopped

    def status(self) -> dict[str, Any]:
        """Per service: running (process alive), answering (metadata / PING ok), address, pid."""
        kafka_running = self.kafka.is_running()
        redis_running = self.redis.is_running()
        return {
            "home": str(self.home),
            "services_file": str(self.services_file) if self.services_file.exists() else None,
            "kafka": {
                "running": kafka_running,
                "answering": kafka_running and self.kafka.is_answering(timeout=3.0),
                "bootstrap": _or_none(lambda: self.kafka.bootstrap),
                "pid": self.kafka.pid,
                "log": str(self.kafka.log_path),
            },
            "redis": {
                "running": redis_running,
                "answering": redis_running and self.redis.is_answering(timeout=2.0),
                "url": _or_none(lambda: self.redis.url),
                "pid": self.redis.pid,
                "log": str(self.redis.log_path),
            },
        }

    def __repr__(self) -> str:
        return f"DevStack(home={str(self.home)!r})"
