"""Atomic, versioned checkpoints of a stream worker's whole in-memory state plus its Kafka offsets.

A worker keeps everything in memory (feature dicts, numpy models, hnswlib indices). To restart
without replaying whole topics it periodically saves that state together with the offsets the
state reflects (per topic and partition, the *next* offset to read). After a restart it loads the
newest checkpoint that verifies and replays only the tail of the topics from those offsets.

Layout under ``root``::

    v00000007/            one checkpoint per version (1, 2, 3, ... never reused)
        state.pkl         the pickled state (protocol 5)
        <extra files>     written by caller-supplied writers, e.g. an hnswlib index
        manifest.json     written last: version, offsets, meta, sha256 + size of every file
    .tmp-XXXX/            a checkpoint being written (or left behind by a crashed writer)

Atomicity: everything is written and fsynced inside a ``.tmp-*`` directory, which is then
renamed to its final ``vNNNNNNNN`` name and the root directory fsynced. A crash (even kill -9)
before the rename leaves only a ``.tmp-*`` directory, which readers ignore and the next save
removes; a crash after it leaves a complete checkpoint. Old versions are pruned by first renaming
them to ``.tmp-*`` so a crash mid-delete never leaves a half checkpoint under a version name.
Loading verifies sha256 and size of every file, so a checkpoint damaged later (truncated disk,
bad copy) is skipped in favour of the previous one.

One writer per root is assumed (one worker owns its state directory); any number of readers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Callable, Mapping


@dataclass(frozen=True)
class CheckpointInfo:
    """What the manifest of one checkpoint says (its files are not verified by this object)."""

    version: int  # 1, 2, 3, ... increasing per store
    path: Path  # directory of this checkpoint
    created_at_ms: int
    offsets: dict[str, dict[int, int]]  # topic -> partition -> next offset to read
    meta: dict  # free JSON-able metadata from the caller
    state_bytes: int
    write_seconds: float


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupt or cannot be written/unpickled."""


class _HashingWriter:
    """File-like sink that hashes what it forwards, so the state is pickled and hashed in one pass."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()

    def write(self, data: Any) -> int:
        self.sha256.update(data)
        return self._f.write(data)


def _sha256_file(path: Path) -> tuple[str, int]:
    """Hex sha256 and size in bytes of a file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _fsync_file(path: Path) -> None:
    """Flush a file someone else wrote to stable storage."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make renames/creations inside a directory durable (a no-op where directories can't be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if os.name == "nt":  # Windows cannot open directories; NTFS metadata is journaled
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_tree(path: Path) -> None:
    """Delete a file or directory tree, ignoring that it may already be gone."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


class CheckpointStore:
    """Versioned checkpoints in directory ``root``, keeping the newest ``keep`` of them."""

    FORMAT_VERSION = 1
    STATE_FILE = "state.pkl"
    MANIFEST_FILE = "manifest.json"
    TMP_PREFIX = ".tmp-"

    def __init__(self, root: str | os.PathLike, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep!r}")
        self.root = Path(root)
        self.keep = keep
        self._log = logging.getLogger("freshrec.checkpoint")
        self.root.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ writing

    def save(self, state: Any, offsets: Mapping[str, Mapping[int, int]], meta: Mapping | None = None,
             files: Mapping[str, Callable[[Path], None]] | None = None) -> CheckpointInfo:
        """Write a new checkpoint atomically and return its info; then prune old versions and
        remove stale ``.tmp-*`` directories. ``files`` maps a file name to a writer called with
        the path to write; whatever files a writer creates in the directory are hashed too."""
        started = time.perf_counter()
        created_at_ms = time.time_ns() // 1_000_000
        clean_offsets = self._check_offsets(offsets)
        try:  # round trip now: fail before writing anything, and return exactly what is stored
            clean_meta = json.loads(json.dumps(dict(meta or {})))
        except (TypeError, ValueError) as e:
            raise TypeError(f"meta must be JSON-serialisable: {e}") from e
        writers = dict(files or {})
        for name in writers:
            self._check_file_name(name)

        tmp = Path(tempfile.mkdtemp(prefix=self.TMP_PREFIX, dir=self.root))
        try:
            hashes: dict[str, dict] = {}
            with open(tmp / self.STATE_FILE, "wb") as f:
                sink = _HashingWriter(f)
                pickle.dump(state, sink, protocol=5)
                f.flush()
                os.fsync(f.fileno())
                state_bytes = os.fstat(f.fileno()).st_size
            hashes[self.STATE_FILE] = {"sha256": sink.sha256.hexdigest(), "size": state_bytes}

            for name, writer in writers.items():
                writer(tmp / name)
                if not (tmp / name).exists():
                    raise CheckpointError(f"writer for {name!r} did not create {tmp / name}")
            hashes.update(self._hash_extra_files(tmp))

            version = self._next_version()
            write_seconds = time.perf_counter() - started
            manifest = {
                "format": self.FORMAT_VERSION,
                "version": version,
                "created_at_ms": created_at_ms,
                "offsets": {t: {str(p): o for p, o in parts.items()} for t, parts in clean_offsets.items()},
                "meta": clean_meta,
                "state_bytes": state_bytes,
                "write_seconds": write_seconds,
                "extra": sorted(writers),
                "files": hashes,
            }
            with open(tmp / self.MANIFEST_FILE, "w", encoding="utf-8") as f:
                json.dump(manifest, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            _fsync_dir(tmp)

            final = self._dir_for(version)
            if final.exists():
                raise CheckpointError(f"{final} already exists (another writer on {self.root}?)")
            os.rename(tmp, final)
        except BaseException:
            _remove_tree(tmp)
            raise
        _fsync_dir(self.root)

        info = CheckpointInfo(version=version, path=final, created_at_ms=created_at_ms,
                              offsets=clean_offsets, meta=clean_meta, state_bytes=state_bytes,
                              write_seconds=write_seconds)
        self._prune()
        return info

    def _check_offsets(self, offsets: Mapping[str, Mapping[int, int]]) -> dict[str, dict[int, int]]:
        """``offsets`` as plain dicts with str topics and int partitions/offsets, or TypeError."""
        out: dict[str, dict[int, int]] = {}
        for topic, parts in offsets.items():
            if not isinstance(topic, str):
                raise TypeError(f"topic must be a str, got {topic!r}")
            out[topic] = {}
            for partition, offset in parts.items():
                for what, value in (("partition", partition), ("offset", offset)):
                    if isinstance(value, bool) or not isinstance(value, int):
                        raise TypeError(f"{what} of topic {topic!r} must be an int, got {value!r}")
                out[topic][int(partition)] = int(offset)
        return out

    def _check_file_name(self, name: str) -> None:
        """Extra files are plain names inside the checkpoint directory, not ours, no traversal."""
        if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name
                or os.sep in name or (os.altsep and os.altsep in name)
                or name in (self.STATE_FILE, self.MANIFEST_FILE)):
            raise ValueError(f"invalid extra file name {name!r}")

    def _hash_extra_files(self, tmp: Path) -> dict[str, dict]:
        """sha256 and size of every file writers left in ``tmp`` (fsynced), by POSIX relative path."""
        out: dict[str, dict] = {}
        for dirpath, dirnames, filenames in os.walk(tmp):
            for fn in filenames:
                path = Path(dirpath) / fn
                rel = path.relative_to(tmp).as_posix()
                if rel in (self.STATE_FILE, self.MANIFEST_FILE):
                    continue
                _fsync_file(path)
                digest, size = _sha256_file(path)
                out[rel] = {"sha256": digest, "size": size}
            for d in dirnames:
                _fsync_dir(Path(dirpath) / d)
        return out

    def _prune(self) -> None:
        """Keep the newest ``keep`` checkpoints; delete other version directories and ``.tmp-*``."""
        keep = {info.version for info in self.list()[-self.keep:]}
        doomed = [p for v, p in self._version_dirs() if v not in keep]
        doomed += [p for p in self.root.iterdir() if p.name.startswith(self.TMP_PREFIX)]
        for path in doomed:
            target = path
            if not path.name.startswith(self.TMP_PREFIX):
                # take it out of the version namespace atomically, then delete at leisure
                target = self.root / f"{self.TMP_PREFIX}del-{path.name}-{os.getpid()}"
                try:
                    os.rename(path, target)
                except OSError as e:
                    self._log.warning("could not prune checkpoint %s: %s", path, e)
                    continue
            _remove_tree(target)
        if doomed:
            _fsync_dir(self.root)

    # ------------------------------------------------------------------ reading

    def list(self) -> list[CheckpointInfo]:
        """Checkpoints whose manifest looks valid, oldest first (files are not verified)."""
        out = []
        for version, path in self._version_dirs():
            try:
                out.append(self._read_info(version, path))
            except CheckpointError as e:
                self._log.debug("ignoring %s: %s", path, e)
        return out

    def latest(self) -> CheckpointInfo | None:
        """The newest checkpoint with a valid-looking manifest, or None."""
        infos = self.list()
        return infos[-1] if infos else None

    def load(self, info: CheckpointInfo) -> Any:
        """The state of checkpoint ``info``, after checking sha256 and size of all its files."""
        manifest = self._read_manifest(info.version, info.path)
        files = manifest["files"]
        if self.STATE_FILE not in files:
            raise CheckpointError(f"manifest of {info.path} lists no {self.STATE_FILE}")
        for rel, expected in files.items():
            if rel == self.STATE_FILE:
                continue
            path = self._member(info.path, rel)
            try:
                digest, size = _sha256_file(path)
            except OSError as e:
                raise CheckpointError(f"cannot read {rel}: {e}") from e
            self._check_hash(rel, expected, digest, size)
        try:
            data = (info.path / self.STATE_FILE).read_bytes()
        except OSError as e:
            raise CheckpointError(f"cannot read {self.STATE_FILE}: {e}") from e
        self._check_hash(self.STATE_FILE, files[self.STATE_FILE], hashlib.sha256(data).hexdigest(), len(data))
        try:
            return pickle.loads(data)
        except Exception as e:  # noqa: BLE001 - e.g. a class that no longer exists
            raise CheckpointError(f"cannot unpickle {self.STATE_FILE}: {type(e).__name__}: {e}") from e

    def load_latest(self) -> tuple[CheckpointInfo, Any] | None:
        """The newest checkpoint that verifies and loads, with its state; None if there is none.
        Newer checkpoints that are incomplete or corrupt are skipped with a warning."""
        for version, path in reversed(self._version_dirs()):
            try:
                info = self._read_info(version, path)
                return info, self.load(info)
            except CheckpointError as e:
                self._log.warning("skipping checkpoint version %d (%s): %s", version, path, e)
        return None

    # ------------------------------------------------------------------ helpers

    def _dir_for(self, version: int) -> Path:
        return self.root / f"v{version:08d}"

    def _version_dirs(self) -> list[tuple[int, Path]]:
        """``(version, path)`` of every directory named like a version, ascending."""
        out = []
        for path in self.root.iterdir():
            name = path.name
            if not (name.startswith("v") and name[1:].isascii() and name[1:].isdigit()):
                continue
            version = int(name[1:])
            if version >= 1 and path == self._dir_for(version) and path.is_dir():
                out.append((version, path))
        return sorted(out)

    def _next_version(self) -> int:
        """Newest version directory + 1 (also counting ones with a bad manifest, so no name is reused)."""
        dirs = self._version_dirs()
        return dirs[-1][0] + 1 if dirs else 1

    def _read_manifest(self, version: int, path: Path) -> dict:
        """The parsed manifest of ``path``, checked for shape and for matching ``version``."""
        try:
            with open(path / self.MANIFEST_FILE, encoding="utf-8") as f:
                manifest = json.load(f)
        except FileNotFoundError as e:
            raise CheckpointError(f"no {self.MANIFEST_FILE} (incomplete checkpoint)") from e
        except (OSError, ValueError) as e:
            raise CheckpointError(f"unreadable {self.MANIFEST_FILE}: {e}") from e
        if not isinstance(manifest, dict):
            raise CheckpointError(f"{self.MANIFEST_FILE} is not an object")
        if manifest.get("format") != self.FORMAT_VERSION:
            raise CheckpointError(f"unsupported checkpoint format {manifest.get('format')!r}")
        if manifest.get("version") != version:
            raise CheckpointError(f"manifest version {manifest.get('version')!r} does not match directory")
        if not isinstance(manifest.get("files"), dict) or not isinstance(manifest.get("offsets"), dict):
            raise CheckpointError(f"{self.MANIFEST_FILE} lacks files/offsets")
        return manifest

    def _read_info(self, version: int, path: Path) -> CheckpointInfo:
        """The :class:`CheckpointInfo` of ``path`` from its manifest (partition keys back to int)."""
        manifest = self._read_manifest(version, path)
        try:
            return CheckpointInfo(
                version=version,
                path=path,
                created_at_ms=int(manifest["created_at_ms"]),
                offsets={str(t): {int(p): int(o) for p, o in parts.items()}
                         for t, parts in manifest["offsets"].items()},
                meta=dict(manifest["meta"]),
                state_bytes=int(manifest["state_bytes"]),
                write_seconds=float(manifest["write_seconds"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CheckpointError(f"malformed {self.MANIFEST_FILE}: {type(e).__name__}: {e}") from e

    def _member(self, base: Path, rel: str) -> Path:
        """``base / rel`` for a manifest entry, refusing absolute paths and ``..``."""
        parts = PurePosixPath(rel).parts
        if not parts or PurePosixPath(rel).is_absolute() or ".." in parts:
            raise CheckpointError(f"manifest lists an unsafe path {rel!r}")
        return base.joinpath(*parts)

    @staticmethod
    def _check_hash(rel: str, expected: Any, digest: str, size: int) -> None:
        """Raise :class:`CheckpointError` unless ``digest``/``size`` match the manifest entry."""
        if not isinstance(expected, dict):
            raise CheckpointError(f"manifest entry for {rel} is malformed")
        if expected.get("size") != size:
            raise CheckpointError(f"{rel}: size {size} != {expected.get('size')} in manifest (truncated?)")
        if expected.get("sha256") != digest:
            raise CheckpointError(f"{rel}: sha256 mismatch (corrupt)")


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this (child) process when its parent dies: a writer left running
    after a ``kill -9`` of the worker would race the restarted worker for the next version."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the child still finishes and exits on its own
        pass


# The writer child runs below the worker's priority: on a busy machine it takes the CPU the consume
# loop leaves (a save is seconds of pickling: in one benchmark run's 5k events/s phase on 2 cores,
# batches took 1.2-2.1 s instead of ~0.55 s while a child at the same priority was saving).
WRITER_NICENESS = 10


class BackgroundCheckpoint:
    """Checkpoints written by a forked child, so the worker keeps consuming while one is saved.

    ``fork`` gives the child a copy-on-write snapshot of the whole process at that instant: the
    state, its offsets and the index are exactly those of the moment :meth:`start` is called,
    and the parent goes on changing its own copy. Measured before this: a synchronous save of
    the learning worker's state stopped the loop for 1.4-3.3 s every 30 s. The child only builds
    the state (``make_state`` runs in the child), writes files and ``os._exit``\\ s: it touches no
    Kafka client, thread or lock of the parent. One save at a time; :meth:`poll` reaps it.
    """

    def __init__(self, store: CheckpointStore) -> None:
        self.store = store
        self.pid: int | None = None
        self.started_at = 0.0
        self._log = logging.getLogger("freshrec.checkpoint")

    @property
    def busy(self) -> bool:
        return self.pid is not None

    def start(self, make_state: Callable[[], Any], offsets: Mapping[str, Mapping[int, int]],
              meta: Mapping | None = None, files: Mapping[str, Callable[[Path], None]] | None = None) -> bool:
        """Fork a child that saves ``make_state()`` with ``offsets``; False if one is still running."""
        if self.pid is not None:
            return False
        offsets = {t: dict(parts) for t, parts in offsets.items()}
        pid = os.fork()
        if pid == 0:  # the child: save and leave without running any of the parent's cleanup
            code = 1
            try:
                _die_with_parent()
                os.nice(WRITER_NICENESS)
                self.store.save(make_state(), offsets, meta, files)
                code = 0
            except BaseException as exc:  # noqa: BLE001 - reported through the exit code and stderr
                try:
                    os.write(2, f"freshrec checkpoint writer failed: {exc!r}\n".encode())
                except OSError:
                    pass
            finally:
                os._exit(code)
        self.pid = pid
        self.started_at = time.perf_counter()
        return True

    def poll(self, block: bool = False) -> CheckpointInfo | None:
        """The checkpoint the child wrote once it has exited (None while it runs or if none
        runs); raises :class:`CheckpointError` when it failed."""
        if self.pid is None:
            return None
        pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
        if pid == 0:
            return None
        self.pid = None
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise CheckpointError(f"checkpoint writer exited with {code}")
        info = self.store.latest()
        if info is None:
            raise CheckpointError("checkpoint writer exited cleanly but no checkpoint is there")
        return info

    def wait(self) -> CheckpointInfo | None:
        """Block until a running save finished (its checkpoint, or None if none ran)."""
        return self.poll(block=True)
