"""``freshrec eval-live``: the prequential test end to end through real Kafka, a worker, real Redis."""

from __future__ import annotations

from pathlib import Path

import pytest

from freshrec.evaluation.live import run_live
from freshrec.evaluation.prequential import limit_interactions
from freshrec.streams.datasets import load_dataset

pytestmark = pytest.mark.integration

DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


def _movielens(n: int) -> list[dict]:
    return list(limit_interactions(load_dataset(f"movielens:{DATASETS / 'movielens-100k'}"), n))


def test_live_run_reads_published_lists_and_survives_a_kill_9(settings, tmp_path):
    s = settings.replace(engine="stream", model="learning", checkpoint_interval_s=1.0, partitions=2)
    events = _movielens(6000)
    res = run_live(s, events, rate=1500, k=10, kill_at=4000, home=tmp_path, window=500, progress=False)

    assert res.interactions == 6000
    assert res.tests > 4000  # almost every rating is a first-time positive
    # lists come from Redis: the learning worker's lists hit far more often than chance (10 of 1682)
    assert res.hitrate > 0.03, res.as_dict()
    assert res.tests_after_kill > 1000 and res.hits_after_kill > 0
    # two worker starts, the second from a checkpoint written before the kill
    assert len(res.recoveries) == 2, res.recoveries
    assert res.recoveries[0]["checkpoint"] == 0 and res.recoveries[1]["checkpoint"] >= 1
    # the worker applied every interaction exactly once across the kill
    assert res.worker_counted == res.interactions
