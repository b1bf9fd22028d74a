"""The stream engine end to end with the learning model: real Kafka, real Redis, real checkpoints."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from freshrec.state.checkpoint import CheckpointStore
from freshrec.state.publisher import RedisKeys
from freshrec.streams.producer import EventProducer
from freshrec.streams.schema import make_event

from .conftest import DATASETS, read_recs as _recs, wait_for

pytestmark = pytest.mark.integration

@pytest.fixture
def stream_worker(worker, worker_settings):
    worker.settings = worker_settings.replace(engine="stream", model="learning", checkpoint_interval_s=2.0)
    return worker


def test_learning_worker_serves_a_new_item_before_its_first_click(stream_worker, redis_client):
    worker = stream_worker
    s = worker.settings
    worker.start()
    five_days_ago = int(time.time() * 1000) - 5 * 86_400_000
    with EventProducer(s) as producer:
        for i in range(30):  # an established catalogue with history, no longer fresh
            producer.send(make_event("item_upsert", item_id=f"old{i}", category="news", tags=["politics"],
                                     text=f"old story number {i}", ts=five_days_ago))
        for u in range(40):
            for i in range(5):
                producer.send(make_event("click", user_id=f"u{u}", item_id=f"old{(u + i) % 30}"))
        producer.flush(10)
    wait_for(lambda: _recs(redis_client, s, "u39"), 90, "the first lists", worker)

    new = make_event("item_upsert", item_id="brand-new", category="news", tags=["politics"],
                     text="a story nobody has clicked yet")
    with EventProducer(s) as producer:
        producer.send(new)
        producer.flush(10)
        # users come back: their lists are recomputed after the upsert (no event names the item)
        for u in range(40):
            producer.send(make_event("click", user_id=f"u{u}", item_id=f"old{(u + 7) % 30}"))
        producer.flush(10)

    def lists_with_new():
        docs = [_recs(redis_client, s, f"u{u}") for u in range(40)]
        fresh = [d for d in docs if d and d["event_ts"] >= new["ts"]]
        if len(fresh) < 40:
            return None
        return [d for d in fresh if any(e["item_id"] == "brand-new" for e in d["items"])]

    with_new = wait_for(lists_with_new, 60, "the lists recomputed after the upsert", worker)
    assert with_new, "the new item is in nobody's list before its first click"
    assert all(d["model"] == "learning-v1" for d in with_new)
    stats = orjson.loads(wait_for(lambda: redis_client.get(RedisKeys(s.redis_prefix).worker_stats(s.app_id)),
                                  30, "worker stats", worker))
    assert stats["counters"].get("events:click", 0) >= 240


def _checkpoint_state(settings, home: Path):
    store = CheckpointStore(home / "checkpoints" / settings.app_id)
    loaded = store.load_latest()
    assert loaded is not None, "no checkpoint written"
    return loaded


def test_kill_9_learning_worker_resumes_from_checkpoint_and_learns_each_event_once(stream_worker):
    from freshrec.streams.datasets import load_dataset
    from freshrec.streams.lag import total_lag

    worker = stream_worker
    s = worker.settings
    events = [e for e in load_dataset(f"movielens:{DATASETS / 'movielens-100k'}") if e["type"] == "rating"]
    events = events[:20000]
    resent = events[::50]  # producer retries: the same event_id again, at a later offset

    def produce() -> None:  # ~2,000 events/s, over ~10 s: the kill lands part-way however fast the worker is
        with EventProducer(s) as producer:
            for start in range(0, len(events), 500):
                for e in events[start:start + 500]:
                    producer.send(e)
                producer.flush(60)
                time.sleep(0.25)

    sender = threading.Thread(target=produce, name="ratings-producer")
    worker.start()
    sender.start()
    store_root = worker.home / "checkpoints" / s.app_id
    wait_for(lambda: CheckpointStore(store_root).latest() is not None
             and 0 < total_lag(s.kafka_brokers, s.app_id, [s.interactions_topic]) < len(events) * 0.8,
             180, "a checkpoint, part-way through", worker)
    worker.kill9()
    assert sender.is_alive() or total_lag(s.kafka_brokers, s.app_id, [s.interactions_topic]) > 0, \
        "finished before the kill"
    sender.join(120)
    assert not sender.is_alive()
    killed_at = CheckpointStore(store_root).latest()
    with EventProducer(s) as producer:
        for e in resent:
            producer.send(e)
        producer.flush(60)
    worker.start()
    worker.wait_caught_up()
    worker.stop()  # SIGTERM: a last checkpoint

    log = worker.log.read_text(errors="replace")
    recovered = re.findall(r"recovery (\d+\.\d+)s \(checkpoint v(\d+)\)", log)
    assert len(recovered) == 2 and int(recovered[1][1]) >= killed_at.version, log[-3000:]
    info, state = _checkpoint_state(s, worker.home)
    assert state["partials"] is False  # the stream engine checkpoints item rows, not per-partition parts
    counts: Counter = Counter()
    for item, row in state["items"].items():
        for etype, n in row["c"].items():
            counts[(item, etype)] += n
    assert counts == Counter((e["item_id"], "rating") for e in events)  # none lost, none twice
    mf = state["recommender"]["mf"]
    assert mf["n_positives"] == len(events)  # every rating learned once by the MF model
    assert sum(info.offsets[s.interactions_topic].values()) == len(events) + len(resent)


def test_a_worker_caught_up_on_a_backlog_is_no_longer_behind_and_lists_every_user(stream_worker, redis_client):
    """A backlog puts the worker behind (full batches); once nothing more comes it must leave
    that mode (it used to keep the last batch's verdict until the next message, so lists
    trickled out at the behind-the-stream budget after the stream went quiet)."""
    from freshrec.streams.topics import ensure_topics

    worker = stream_worker
    worker.settings = s = worker.settings.replace(batch_max=50, recompute_budget_behind_ms=1)
    ensure_topics(s)
    with EventProducer(s) as producer:  # before the worker starts: it meets full batches
        for u in range(300):
            producer.send(make_event("click", user_id=f"b{u}", item_id=f"i{u % 20}"))
        producer.flush(10)
    worker.start()
    key = RedisKeys(s.redis_prefix).worker_stats(s.app_id)

    def caught_up():
        raw = redis_client.get(key)
        stats = orjson.loads(raw) if raw else None
        if not stats or stats["counters"].get("events:click", 0) < 300:
            return None
        return stats if stats["behind"] is False else None

    stats = wait_for(caught_up, 90, "stats of the worker caught up and no longer behind", worker)
    assert stats["counters"]["batches_behind"] > 0  # it was behind on the backlog
    wait_for(lambda: all(_recs(redis_client, s, f"b{u}") for u in range(300)), 60, "a list for every user", worker)


def test_a_worker_on_a_backlog_reads_the_catalogue_before_the_interactions(stream_worker, redis_client):
    """Clicks produced before their items' upserts, all waiting when the worker starts: it reads
    the catalogue first (interaction partitions paused), so no click names an unknown item.
    Without the gate, this backlog came to the worker interleaved partition by partition."""
    from freshrec.streams.topics import ensure_topics

    worker = stream_worker
    worker.settings = s = worker.settings.replace(batch_max=50)
    ensure_topics(s)
    items = [f"g{i}" for i in range(50)]
    with EventProducer(s) as producer:
        for n in range(2000):
            producer.send(make_event("click", user_id=f"c{n % 200}", item_id=items[n % 50]))
        producer.flush(10)
        for i, item in enumerate(items):
            producer.send(make_event("item_upsert", item_id=item, category=f"cat{i % 5}", text=f"story {i}"))
        producer.flush(10)
    worker.start()
    key = RedisKeys(s.redis_prefix).worker_stats(s.app_id)

    def all_applied():
        raw = redis_client.get(key)
        stats = orjson.loads(raw) if raw else None
        c = stats["counters"] if stats else {}
        return c if c.get("events:click", 0) >= 2000 and c.get("events:item_upsert", 0) >= 50 else None

    counters = wait_for(all_applied, 120, "every click and upsert applied", worker)
    assert counters.get("uncatalogued_item_events", 0) == 0, worker.tail()
    assert "catalogue first: interactions resumed (caught up)" in worker.log.read_text(), worker.tail()
