"""A local, throwaway ``redis-server`` on a loopback port (no persistence, no Docker).

freshrec only publishes derived lists to Redis (the worker can always republish them), so the
dev server keeps nothing on disk: ``--save '' --appendonly no``.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from freshrec.localinfra._proc import (
    LocalInfraError,
    free_port,
    port_is_free,
    process_matches,
    read_json,
    read_pid,
    spawn,
    tail,
    terminate,
    write_json,
)

__all__ = ["LocalInfraError", "RedisServer", "find_redis_server"]


def find_redis_server() -> str:
    """Path of the ``redis-server`` executable, or a clear error saying how to install it."""
    found = shutil.which("redis-server")
    if found:
        return found
    raise LocalInfraError(
        "redis-server not found on PATH: the local stack needs it. Install it "
        "(Debian/Ubuntu: apt-get install -y redis-server; macOS: brew install redis), "
        "or point FRESHREC_REDIS_URL at an existing Redis.")


class RedisServer:
    """One ``redis-server`` bound to 127.0.0.1, with its pid, port and log in ``data_dir``.

    The port is saved in ``redis.json`` and reused on restart when still free, so the URL a
    running worker was given stays valid.
    """

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self._want_port = port
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = port or read_json(self.state_path).get("port")

    @property
    def state_path(self) -> Path:
        return self.data_dir / "redis.json"

    @property
    def pid_path(self) -> Path:
        return self.data_dir / "redis.pid"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def port(self) -> int:
        if self._port is None:
            raise LocalInfraError(f"redis in {self.data_dir} has no port yet: call start() first")
        return int(self._port)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """Pid of the running server for this data dir, else None."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        pid = read_pid(self.pid_path)
        return pid if self._matches(pid) else None

    def _markers(self) -> tuple[str, ...]:
        # redis-server rewrites its process title to "redis-server 127.0.0.1:PORT", so the
        # port (saved by us) is what identifies our server.
        return ("redis-server", f"127.0.0.1:{self._port}")

    def _matches(self, pid: int | None) -> bool:
        return self._port is not None and process_matches(pid, self._markers())

    def is_running(self) -> bool:
        """True when the redis-server process for this data dir is alive."""
        return self.pid is not None

    def is_answering(self, timeout: float = 2.0) -> bool:
        """True when the server answers PING within ``timeout`` seconds."""
        if self._port is None:
            return False
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout,
                             socket_connect_timeout=timeout)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def start(self, timeout: float = 20) -> "RedisServer":
        """Start redis-server (or attach to the one already running here); wait for PING."""
        deadline = time.monotonic() + timeout
        if self._matches(read_pid(self.pid_path)):
            self._wait_answering(deadline, started_here=False)
            return self
        exe = find_redis_server()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._want_port:
            if not port_is_free(self._want_port):
                raise LocalInfraError(f"cannot start redis-server: port 127.0.0.1:"
                                      f"{self._want_port} is already in use")
            self._port = self._want_port
        elif not self._port or not port_is_free(self._port):
            self._port = free_port()
        write_json(self.state_path, {"port": self._port})
        args = [exe, "--bind", "127.0.0.1", "--port", str(self._port), "--save", "",
                "--appendonly", "no", "--daemonize", "no", "--dir", str(self.data_dir),
                "--logfile", str(self.log_path)]
        self._proc = spawn(args, self.log_path, cwd=self.data_dir)
        self.pid_path.write_text(f"{self._proc.pid}\n")
        try:
            self._wait_answering(deadline, started_here=True)
        except BaseException:
            self.stop(timeout=5)
            raise
        return self

    def _wait_answering(self, deadline: float, started_here: bool) -> None:
        while True:
            if started_here and self._proc is not None and self._proc.poll() is not None:
                raise LocalInfraError(
                    f"redis-server exited with code {self._proc.returncode} while starting "
                    f"(port {self._port}).\n--- last lines of {self.log_path}:\n"
                    f"{tail(self.log_path, 25)}")
            if self.is_answering(timeout=0.5):
                return
            if time.monotonic() > deadline:
                raise LocalInfraError(
                    f"redis-server on 127.0.0.1:{self._port} did not answer PING in time.\n"
                    f"--- last lines of {self.log_path}:\n{tail(self.log_path, 25)}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10) -> bool:
        """SIGTERM, wait ``timeout`` s, then SIGKILL. Returns True if a server was running."""
        child = self._proc
        pid = child.pid if child is not None else read_pid(self.pid_path)
        was_running = bool(pid) and self._port is not None and terminate(
            pid, self._markers(), timeout, child)  # type: ignore[arg-type]
        self._proc = None
        self.pid_path.unlink(missing_ok=True)
        return was_running

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RedisServer(data_dir={str(self.data_dir)!r}, port={self._port})"
