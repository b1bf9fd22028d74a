import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from freshrec.state.checkpoint import BackgroundCheckpoint, CheckpointError, CheckpointInfo, CheckpointStore

OFFSETS = {"events": {0: 10, 1: 7}, "catalogue": {0: 3}}


def _names(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def _write_bytes(data: bytes):
    def writer(path: Path) -> None:
        path.write_bytes(data)
    return writer


def test_round_trip_of_dicts_numpy_and_nested_structures(tmp_path):
    store = CheckpointStore(tmp_path)
    arr = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    state = {
        "features": {"u1": {"clicks": 3, "last": 1_700_000_000_000}, "u2": {}},
        "model": {"item_factors": arr, "ids": ["a", "b", "c"], "rng": (1, 2.5, None)},
        "nested": [{"s": {1, 2}, "t": ("x", [b"raw", {"deep": [1, [2, [3]]]}])}],
    }
    info = store.save(state, OFFSETS, meta={"model": "OnlineMF", "events": 123})
    loaded = store.load(info)
    assert loaded is not state
    np.testing.assert_array_equal(loaded["model"]["item_factors"], arr)
    assert loaded["model"]["item_factors"].dtype == np.float32
    rest = {k: v for k, v in loaded["model"].items() if k != "item_factors"}
    assert rest == {"ids": ["a", "b", "c"], "rng": (1, 2.5, None)}
    assert loaded["features"] == state["features"]
    assert loaded["nested"] == state["nested"]
    assert info.meta == {"model": "OnlineMF", "events": 123}
    assert info.state_bytes == (info.path / "state.pkl").stat().st_size > 0
    assert info.write_seconds >= 0 and info.created_at_ms > 1_600_000_000_000
    # what save returns is exactly what the manifest gives back later
    assert store.list() == [info]
    got_info, got_state = store.load_latest()
    assert got_info == info
    np.testing.assert_array_equal(got_state["model"]["item_factors"], arr)


def test_offsets_come_back_with_int_partition_keys(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save({}, {"events": {0: 10, 12: 99}})
    manifest = json.loads((store.latest().path / "manifest.json").read_text())
    assert manifest["offsets"] == {"events": {"0": 10, "12": 99}}  # JSON keys are strings on disk
    for info in (store.latest(), store.load_latest()[0], CheckpointStore(tmp_path).list()[0]):
        assert info.offsets == {"events": {0: 10, 12: 99}}
        assert all(type(p) is int for p in info.offsets["events"])


def test_bad_offsets_and_file_names_are_rejected_before_writing(tmp_path):
    store = CheckpointStore(tmp_path)
    with pytest.raises(TypeError):
        store.save({}, {"events": {"0": 10}})
    with pytest.raises(ValueError):
        store.save({}, OFFSETS, files={"../escape": _write_bytes(b"x")})
    with pytest.raises(ValueError):
        store.save({}, OFFSETS, files={"state.pkl": _write_bytes(b"x")})
    with pytest.raises(TypeError):
        store.save({}, OFFSETS, meta={"not json": object()})
    assert _names(tmp_path) == []


def test_versions_increase(tmp_path):
    store = CheckpointStore(tmp_path, keep=5)
    versions = [store.save({"i": i}, {"events": {0: i}}).version for i in range(3)]
    assert versions == [1, 2, 3]
    assert [i.version for i in store.list()] == [1, 2, 3]
    assert _names(tmp_path) == ["v00000001", "v00000002", "v00000003"]
    assert store.latest().version == 3
    assert store.load_latest()[1] == {"i": 2}


def test_keep_prunes_to_newest_and_versions_keep_increasing(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    for i in range(4):
        store.save({"i": i}, {"events": {0: i}})
    assert [i.version for i in store.list()] == [3, 4]
    assert _names(tmp_path) == ["v00000003", "v00000004"]
    assert store.save({"i": 4}, {"events": {0: 4}}).version == 5
    assert [i.version for i in store.list()] == [4, 5]
    # a fresh store object on the same root continues the sequence too
    assert CheckpointStore(tmp_path, keep=2).save({}, {}).version == 6


def test_crash_while_pruning_never_leaves_a_half_deleted_version(tmp_path, monkeypatch):
    import shutil

    class Killed(BaseException):
        pass

    def dies_half_way(path, *args, **kwargs):  # deletes one file, then the process "dies"
        (Path(path) / "state.pkl").unlink(missing_ok=True)
        raise Killed()

    store = CheckpointStore(tmp_path, keep=1)
    store.save({"gen": 1}, OFFSETS)
    monkeypatch.setattr(shutil, "rmtree", dies_half_way)
    with pytest.raises(Killed):
        store.save({"gen": 2}, OFFSETS)
    monkeypatch.undo()
    # the half-deleted old version is out of the version namespace: nothing broken is listed
    assert [i.version for i in store.list()] == [2]
    assert not (tmp_path / "v00000001").exists()
    assert store.load_latest()[1] == {"gen": 2}
    store.save({"gen": 3}, OFFSETS)
    assert _names(tmp_path) == ["v00000003"]


def test_keep_must_be_positive(tmp_path):
    with pytest.raises(ValueError):
        CheckpointStore(tmp_path, keep=0)


def test_extra_file_is_saved_and_its_corruption_fails_load(tmp_path):
    store = CheckpointStore(tmp_path)
    payload = bytes(range(256)) * 10
    info = store.save({"n": 1}, OFFSETS, files={"index.bin": _write_bytes(payload)})
    assert (info.path / "index.bin").read_bytes() == payload
    manifest = json.loads((info.path / "manifest.json").read_text())
    assert manifest["files"]["index.bin"]["size"] == len(payload)
    assert store.load(info) == {"n": 1}

    damaged = bytearray(payload)
    damaged[100] ^= 0xFF  # same size, different content
    (info.path / "index.bin").write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match="index.bin"):
        store.load(info)
    (info.path / "index.bin").unlink()
    with pytest.raises(CheckpointError, match="index.bin"):
        store.load(info)


def test_files_a_writer_creates_next_to_its_own_are_verified_too(tmp_path):
    # like ItemIndex.save, which writes `path` and `path + ".json"`
    def writer(path: Path) -> None:
        path.write_bytes(b"hnsw")
        Path(str(path) + ".json").write_text('{"dim": 8}')

    store = CheckpointStore(tmp_path)
    info = store.save({}, OFFSETS, files={"items.hnsw": writer})
    assert (info.path / "items.hnsw.json").exists()
    store.load(info)
    (info.path / "items.hnsw.json").write_text('{"dim": 9}')
    with pytest.raises(CheckpointError, match="items.hnsw.json"):
        store.load(info)


def test_failing_writer_leaves_nothing_behind(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save({"ok": True}, OFFSETS)

    def boom(path: Path) -> None:
        path.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.save({"ok": False}, OFFSETS, files={"index.bin": boom})
    assert _names(tmp_path) == ["v00000001"]
    assert store.load_latest()[1] == {"ok": True}

    def lazy(path: Path) -> None:
        pass

    with pytest.raises(CheckpointError, match="did not create"):
        store.save({}, OFFSETS, files={"index.bin": lazy})
    assert _names(tmp_path) == ["v00000001"]


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_newest_state_falls_back_to_previous(tmp_path, caplog, damage):
    store = CheckpointStore(tmp_path)
    store.save({"gen": 1}, {"events": {0: 100}})
    newest = store.save({"gen": 2, "blob": list(range(1000))}, {"events": {0: 200}})
    pkl = newest.path / "state.pkl"
    data = bytearray(pkl.read_bytes())
    if damage == "truncate":
        pkl.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[len(data) // 2] ^= 0x01
        pkl.write_bytes(bytes(data))

    assert store.latest().version == 2  # list()/latest() do not verify hashes
    with pytest.raises(CheckpointError):
        store.load(newest)
    with caplog.at_level(logging.WARNING, logger="freshrec.checkpoint"):
        info, state = store.load_latest()
    assert info.version == 1 and state == {"gen": 1}
    assert info.offsets == {"events": {0: 100}}
    warnings = [r for r in caplog.records if r.name == "freshrec.checkpoint" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    assert "version 2" in msg
    assert ("size" in msg) if damage == "truncate" else ("sha256" in msg)


def test_leftover_tmp_dir_is_ignored_and_removed_by_next_save(tmp_path, caplog):
    store = CheckpointStore(tmp_path)
    store.save({"gen": 1}, OFFSETS)
    # a crashed writer's directory, complete-looking inside, even claiming a higher version
    tmp = tmp_path / ".tmp-xyz"
    tmp.mkdir()
    (tmp / "state.pkl").write_bytes(b"partial")
    (tmp / "manifest.json").write_text(json.dumps({"format": 1, "version": 2}))
    with caplog.at_level(logging.WARNING, logger="freshrec.checkpoint"):
        assert [i.version for i in store.list()] == [1]
        assert store.load_latest()[1] == {"gen": 1}
    assert not caplog.records  # nothing newer was skipped: the tmp dir is not a checkpoint
    info = store.save({"gen": 2}, OFFSETS)
    assert info.version == 2
    assert not tmp.exists()
    assert _names(tmp_path) == ["v00000001", "v00000002"]


def test_kill_9_mid_write_leaves_previous_checkpoint_loadable(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save({"gen": 1}, {"events": {0: 5}})
    child = textwrap.dedent(f"""
        import os, signal
        from freshrec.state.checkpoint import CheckpointStore

        def die(path):
            path.write_bytes(b"half an index")
            os.kill(os.getpid(), signal.SIGKILL)

        CheckpointStore({str(tmp_path)!r}).save({{"gen": 2}}, {{"events": {{0: 9}}}}, files={{"index.bin": die}})
    """)
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    leftovers = [n for n in _names(tmp_path) if n.startswith(".tmp-")]
    assert len(leftovers) == 1  # the crash left its temporary directory ...
    info, state = store.load_latest()  # ... which is not taken for a checkpoint
    assert (info.version, state, info.offsets) == (1, {"gen": 1}, {"events": {0: 5}})
    assert store.save({"gen": 3}, {"events": {0: 9}}).version == 2
    assert _names(tmp_path) == ["v00000001", "v00000002"]


def test_empty_store(tmp_path):
    root = tmp_path / "not" / "yet"
    store = CheckpointStore(root)
    assert root.is_dir()
    assert store.list() == []
    assert store.latest() is None
    assert store.load_latest() is None


def test_directory_without_manifest_is_ignored(tmp_path, caplog):
    store = CheckpointStore(tmp_path, keep=5)
    store.save({"gen": 1}, OFFSETS)
    orphan = tmp_path / "v00000002"
    orphan.mkdir()
    (orphan / "state.pkl").write_bytes(b"\x80\x05N.")  # a valid pickle, but no manifest
    (tmp_path / "notes").mkdir()  # not ours at all
    assert [i.version for i in store.list()] == [1]
    assert store.latest().version == 1
    with caplog.at_level(logging.WARNING, logger="freshrec.checkpoint"):
        info, state = store.load_latest()
    assert (info.version, state) == (1, {"gen": 1})
    assert any("version 2" in r.getMessage() and "manifest" in r.getMessage() for r in caplog.records)
    # the orphan's name is never reused, and pruning clears it out of the version namespace
    assert store.save({"gen": 3}, OFFSETS).version == 3
    assert [i.version for i in store.list()] == [1, 3]
    assert _names(tmp_path) == ["notes", "v00000001", "v00000003"]


def test_info_is_frozen(tmp_path):
    info = CheckpointStore(tmp_path).save({}, OFFSETS)
    assert isinstance(info, CheckpointInfo)
    with pytest.raises(AttributeError):
        info.version = 7  # type: ignore[misc]


def test_background_checkpoint_saves_the_state_as_it_was_at_start_while_the_parent_goes_on(tmp_path):
    store = CheckpointStore(tmp_path / "ck")
    writer = BackgroundCheckpoint(store)
    go = tmp_path / "go"
    state = {"users": {"u1": 1}}

    def slow_index(path: Path) -> None:  # runs in the child: waits until the parent has moved on
        for _ in range(2000):
            if go.exists():
                break
            time.sleep(0.005)
        path.write_bytes(b"index")

    assert writer.start(lambda: state, {"t": {0: 5}}, {"m": 1}, {"index.bin": slow_index})
    assert writer.poll() is None and writer.busy  # the parent is not blocked by the child's write
    assert not writer.start(lambda: state, {"t": {0: 6}})  # one at a time
    state["users"]["u2"] = 2  # changes after the fork are not in the checkpoint
    go.touch()
    info = writer.wait()
    assert info is not None and info.version == 1 and info.offsets == {"t": {0: 5}} and info.meta == {"m": 1}
    assert store.load(info) == {"users": {"u1": 1}}
    assert (info.path / "index.bin").read_bytes() == b"index"
    assert not writer.busy and writer.poll() is None


def test_the_background_writer_runs_below_the_workers_priority(tmp_path):
    from freshrec.state.checkpoint import WRITER_NICENESS

    store = CheckpointStore(tmp_path / "ck")
    writer = BackgroundCheckpoint(store)
    parent = os.nice(0)
    assert writer.start(lambda: {"niceness": os.nice(0)}, {"t": {0: 1}})  # make_state runs in the child
    info = writer.wait()
    assert store.load(info) == {"niceness": min(19, parent + WRITER_NICENESS)}
    assert os.nice(0) == parent  # the worker's own priority is untouched


def test_a_failing_background_checkpoint_is_reported_and_leaves_the_previous_one(tmp_path):
    store = CheckpointStore(tmp_path / "ck")
    store.save({"v": 1}, {"t": {0: 1}})
    writer = BackgroundCheckpoint(store)

    def broken() -> dict:
        raise RuntimeError("cannot build the state")

    assert writer.start(broken, {"t": {0: 2}})
    with pytest.raises(CheckpointError, match="exited with 1"):
        writer.wait()
    assert store.latest().version == 1 and store.load(store.latest()) == {"v": 1}
    assert writer.start(lambda: {"v": 2}, {"t": {0: 2}})  # the next one runs
    assert writer.wait().version == 2


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            state = next(line for line in f if line.startswith("State:"))
    except (FileNotFoundError, ProcessLookupError):
        return False
    return " Z " not in state and "zombie" not in state


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc (PR_SET_PDEATHSIG)")
def test_a_background_writer_dies_with_a_killed_worker_and_leaves_no_checkpoint(tmp_path):
    """After kill -9 of the worker, its checkpoint child must not go on to write a version that a
    restarted worker's own next checkpoint would race."""
    pid_file = tmp_path / "child.pid"
    script = textwrap.dedent(f"""
        import os, time
        from pathlib import Path
        from freshrec.state.checkpoint import BackgroundCheckpoint, CheckpointStore

        def slow(path):  # runs in the child
            Path({str(pid_file)!r}).write_text(str(os.getpid()))
            time.sleep(60)
            path.write_bytes(b"late")

        w = BackgroundCheckpoint(CheckpointStore({str(tmp_path / "ck")!r}))
        w.start(lambda: {{"v": 1}}, {{"t": {{0: 1}}}}, files={{"x.bin": slow}})
        time.sleep(120)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        for _ in range(400):
            if pid_file.exists() and pid_file.read_text():
                break
            time.sleep(0.05)
        child = int(pid_file.read_text())
        assert _alive(child)
        parent.kill()
        parent.wait(10)
        for _ in range(100):
            if not _alive(child):
                break
            time.sleep(0.05)
        assert not _alive(child), "the checkpoint child outlived its killed parent"
        assert CheckpointStore(tmp_path / "ck").latest() is None
    finally:
        if parent.poll() is None:
            parent.kill()
