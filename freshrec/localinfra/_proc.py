"""Small process/port helpers shared by the Kafka and Redis launchers (private).

The launchers start long-lived servers that must survive the command that started them
(``freshrec dev up`` returns, ``freshrec dev down`` runs later in another process), so they
track their server by a pid file in the data dir and check, before signalling a pid, that it
still is *their* server (pids get reused).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator, Sequence


class LocalInfraError(RuntimeError):
    """A local service could not be set up, started or stopped (message says why and what to do)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:``port`` and we may bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``, or ``{}`` when missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` atomically (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock, so two concurrent `dev up` / fetches do not race."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def tail(path: Path, lines: int = 40, start: int = 0) -> str:
    """The last ``lines`` lines of a log file after byte ``start`` ('' when missing)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(start, size - 64 * 1024))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _cmdline(pid: int) -> list[str] | None:
    """Arguments of process ``pid`` (None when it does not exist or is a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[-1].split()[0] == "Z":
            return None
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]
    except FileNotFoundError:
        return None
    except OSError:
        pass
    # No /proc (macOS): ask ps.
    out = subprocess.run(["ps", "-o", "stat=,command=", "-p", str(pid)],
                         capture_output=True, text=True, check=False).stdout.strip()
    if not out or out.startswith("Z"):
        return None
    return out.split(None, 1)[-1].split()


def process_matches(pid: int | None, markers: Sequence[str]) -> bool:
    """True when ``pid`` is alive and every marker is one of its command-line words.

    A word is an argument, a whitespace-separated piece of one (redis-server rewrites its
    title to ``redis-server 127.0.0.1:PORT``), or the file name of a path argument.
    """
    if not pid:
        return False
    args = _cmdline(pid)
    if args is None:
        return False
    words = set(args)
    for arg in args:
        words.update(arg.split())
    words.update(word.rsplit("/", 1)[-1] for word in list(words))
    return all(marker in words for marker in markers)


def read_pid(path: Path) -> int | None:
    """The pid stored in a pid file, or None."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def spawn(args: Sequence[str], log_path: Path, cwd: Path, env: dict[str, str] | None = None
          ) -> subprocess.Popen[bytes]:
    """Start a detached server (own session: a Ctrl-C of the caller does not reach it)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(args)}\n"
                  .encode())
        log.flush()
        return subprocess.Popen(list(args), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                start_new_session=True, close_fds=True)


def terminate(pid: int, markers: Sequence[str], timeout: float,
              child: subprocess.Popen[bytes] | None = None) -> bool:
    """SIGTERM ``pid``, wait up to ``timeout`` s, then SIGKILL. Returns True if it was running.

    ``markers`` guard against signalling an unrelated process that reused the pid;
    ``child`` is our own Popen when we started it (so it gets reaped, not left a zombie).
    """
    if not process_matches(pid, markers):
        if child is not None:
            child.poll()
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if _wait_gone(pid, markers, timeout, child):
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _wait_gone(pid, markers, 10.0, child)
    return True


def _wait_gone(pid: int, markers: Sequence[str], timeout: float,
               child: subprocess.Popen[bytes] | None) -> bool:
    if child is not None:
        try:
            child.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process_matches(pid, markers):
            return True
        time.sleep(0.1)
    return not process_matches(pid, markers)
