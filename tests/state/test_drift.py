"""Drift: PSI of the click model's inputs and predictions, per window, against a reference."""

from itertools import islice
from pathlib import Path

import numpy as np
import orjson

from freshrec.settings import Settings
from freshrec.state.drift import DriftMonitor, bin_edges, proportions, psi
from freshrec.state.pipeline import Pipeline, Record
from freshrec.streams.datasets import load_dataset


def test_psi_is_near_zero_for_the_same_distribution_and_large_for_a_shift():
    rng = np.random.default_rng(0)
    m = DriftMonitor(["a", "b"], window=2000)
    m.observe(np.column_stack([rng.normal(0, 1, 2000), rng.integers(0, 3, 2000)]))
    assert m.windows == 1 and m.psi == {"a": 0.0, "b": 0.0}  # the reference
    m.observe(np.column_stack([rng.normal(0, 1, 2000), rng.integers(0, 3, 2000)]))
    assert m.psi["a"] < 0.05 and m.psi["b"] < 0.05
    m.observe(np.column_stack([rng.normal(1.0, 1, 2000), rng.integers(0, 3, 2000)]))
    assert m.psi["a"] > 0.25 and m.psi["b"] < 0.05
    m.observe(np.column_stack([rng.normal(1.0, 1, 2000), rng.integers(0, 3, 2000)]))
    assert m.psi["a"] < 0.05  # window over window: the shift is news once
    m.rebase()
    assert m.snapshot()["has_reference"] is False


def test_a_constant_column_that_changes_shows_as_drift():
    edges = bin_edges(np.zeros(100), 10)
    same, moved = proportions(np.zeros(100), edges), proportions(np.full(100, 0.5), edges)
    assert psi(same, same) == 0.0 and psi(same, moved) > 1.0


def _records(events, topic, start):
    return [Record(topic, 0, start + n, orjson.dumps(e)) for n, e in enumerate(events)]


def test_drift_moves_when_the_replayed_data_set_changes_mid_stream(shared_datasets: Path):
    """Synthetic traffic, then MovieLens ratings into the same worker: the served features shift."""
    now = [0]
    p = Pipeline(Settings(recompute_interval_ms=0, trending_interval_ms=200), clock=lambda: now[0])
    p.drift = DriftMonitor(p.drift.names, window=3000)
    p._watch_drift()

    def feed(dataset, n):
        offsets = {"i": 0, "c": 0}
        maxima = []
        batch_i, batch_c = [], []
        for e in islice(load_dataset(dataset), n):
            (batch_c if e["type"].startswith("item_") else batch_i).append(e)
            if len(batch_i) >= 200 or len(batch_c) >= 2000:
                now[0] = max(now[0], max(ev["ts"] for ev in batch_i + batch_c)) + 1
                p.process_catalogue(_records(batch_c, "t.catalogue", offsets["c"] + feed.base))
                p.process_interactions(_records(batch_i, "t.interactions", offsets["i"] + feed.base))
                offsets["c"] += len(batch_c)
                offsets["i"] += len(batch_i)
                batch_i, batch_c = [], []
                p.collect_updates(force=True)
                if p.drift.windows > windows[0]:
                    windows[0] = p.drift.windows
                    maxima.append(max(p.drift.psi.values()))
        feed.base += 10**7
        return maxima

    feed.base = 0
    windows = [1]
    before = feed("synthetic:users=300,items=500,events=20000", 21000)
    after = feed(f"movielens:{shared_datasets / 'movielens-100k'}", 12000)
    assert before and after, (before, after)
    assert max(after) > 0.25, after
    assert max(after) > 3 * np.median(before), (before, after)


def test_windows_are_the_same_however_the_rows_are_split_between_calls():
    rng = np.random.default_rng(1)
    rows = np.column_stack([rng.normal(0, 1, 9000), rng.integers(0, 3, 9000)])
    whole, pieces = DriftMonitor(["a", "b"], window=2000), DriftMonitor(["a", "b"], window=2000)
    whole.observe(rows)
    start = 0
    for size in rng.integers(1, 700, 100):
        pieces.observe(rows[start:start + size])
        start += size
        if start >= len(rows):
            break
    pieces.observe(rows[start:])
    assert whole.windows == pieces.windows == 4
    assert whole.psi == pieces.psi and whole.snapshot() == pieces.snapshot()
