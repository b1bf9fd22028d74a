"""A real ``freshrec worker`` subprocess per test, against the session's Kafka and Redis."""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import orjson
import pytest
import redis

from freshrec.cli import start_worker_process, stop_process, wait_caught_up
from freshrec.settings import Settings
from freshrec.state.publisher import RedisKeys
from freshrec.streams.topics import ensure_topics


DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


def read_recs(client: redis.Redis, settings: Settings, user: str) -> dict | None:
    """The user's published list document, or None."""
    raw = client.get(RedisKeys(settings.redis_prefix).recs(user))
    return None if raw is None else orjson.loads(raw)


class WorkerHandle:
    def __init__(self, settings: Settings, home: Path) -> None:
        self.settings = settings
        self.home = home
        self.procs: list[subprocess.Popen] = []
        self.env: dict[str, str] = {}  # more environment for the worker processes

    @property
    def log(self) -> Path:
        return self.home / "worker.log"

    def start(self) -> subprocess.Popen:
        proc = start_worker_process(self.settings, self.log, extra_env={"FRESHREC_HOME": str(self.home), **self.env})
        self.procs.append(proc)
        return proc

    def kill9(self) -> None:
        self.procs[-1].send_signal(signal.SIGKILL)
        self.procs[-1].wait(timeout=30)

    def wait_caught_up(self, timeout_s: float = 240.0) -> None:
        wait_caught_up(self.settings, timeout_s=timeout_s, quiet=True, proc=self.procs[-1])

    def stop(self) -> None:
        for proc in self.procs:
            stop_process(proc, timeout_s=30)

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:]) if self.log.exists() else ""


@pytest.fixture
def worker_settings(settings: Settings) -> Settings:
    s = settings.replace(web_port=0, partitions=4)
    ensure_topics(s)
    return s


@pytest.fixture
def worker(worker_settings: Settings, tmp_path: Path) -> Iterator[WorkerHandle]:
    handle = WorkerHandle(worker_settings, tmp_path)
    yield handle
    handle.stop()


@pytest.fixture
def redis_client(worker_settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(worker_settings.redis_url)


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str, handle: WorkerHandle | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if handle is not None and handle.procs and handle.procs[-1].poll() is not None:
            pytest.fail(f"worker exited ({handle.procs[-1].returncode}) waiting for {what}:\n{handle.tail()}")
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}" + (f":\n{handle.tail()}" if handle else ""))


def http_get(url: str) -> tuple[int, bytes]:
    """(status, body) of a GET; status 0 when nothing listens."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def prom_sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one Prometheus sample (labels matched as a subset)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None
