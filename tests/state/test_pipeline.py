import orjson

from freshrec.settings import Settings
from freshrec.state.pipeline import Pipeline, Record
from freshrec.state.publisher import Updates

TOPIC = "t.interactions"


class Clock:
    def __init__(self, t=1_700_000_000_000):
        self.t = t

    def __call__(self):
        return self.t


def rec(offset, obj, partition=0, topic=TOPIC):
    value = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return Record(topic, partition, offset, value)


def click(i, user="u1", item="a", ts=1_700_000_000_000):
    return {"type": "click", "event_id": f"e{i}", "user_id": user, "item_id": item, "ts": ts}


def test_bad_records_are_rejected_with_reasons_and_good_ones_around_them_applied():
    p = Pipeline(Settings(max_event_bytes=1000), clock=Clock())
    records = [
        rec(0, click(0)),
        rec(1, b"this is not json"),
        rec(2, {"type": "click", "event_id": "x", "item_id": "a", "ts": 1}),
        rec(3, {"type": "teleport", "event_id": "y", "user_id": "u", "ts": 1}),
        rec(4, b'{"type":"click","pad":"' + b"x" * 2_000_000 + b'"}'),
        rec(5, {"type": "item_upsert", "event_id": "z", "item_id": "a", "ts": 1}),
        Record(TOPIC, 0, 6, None),
        rec(7, click(7, item="b")),
    ]
    result = p.process_interactions(records)
    assert result.applied == 2
    reasons = {r.record.offset: r.reason for r in result.rejected}
    assert reasons == {1: "not_json", 2: "missing_field", 3: "unknown_type", 4: "oversized",
                       5: "wrong_topic", 6: "not_json"}
    assert "user_id" in next(r.detail for r in result.rejected if r.record.offset == 2)
    assert p.features.item_stats.count("b", "click") == 1


def test_a_burst_for_one_user_is_recomputed_once_per_interval():
    clock = Clock()
    p = Pipeline(Settings(recompute_interval_ms=200), clock=clock)
    p.process_interactions([rec(i, click(i, item=f"i{i}")) for i in range(50)])
    first = p.collect_updates()
    assert first.recs == 1
    p.process_interactions([rec(50, click(50, item="z"))])
    clock.t += 100
    assert p.collect_updates().recs == 0  # within the interval: coalesced, not dropped
    clock.t += 100
    later = p.collect_updates()
    assert later.recs == 1
    doc = orjson.loads(dict(later.sets)[p.keys.recs("u1")])
    assert doc["user_id"] == "u1" and doc["event_ts"] == 1_700_000_000_000
    assert doc["generated_at"] == clock.t and doc["model"] == p.model_name
    assert all(e["item_id"] not in {"z", "i0"} for e in doc["items"])  # seen items excluded


def test_duplicates_are_counted_once_and_user_delete_removes_the_published_list():
    p = Pipeline(Settings(), clock=Clock())
    r = p.process_interactions([rec(0, click(0)), rec(1, click(0)), rec(2, click(1, user="u2"))])
    assert r.applied == 2 and r.duplicates == 1
    assert p.features.item_stats.count("a", "click") == 2
    p.collect_updates(force=True)
    p.process_interactions([rec(3, {"type": "user_delete", "event_id": "d", "user_id": "u1", "ts": 2})])
    up = p.collect_updates(force=True)
    assert p.keys.recs("u1") in up.deletes
    assert p.keys.recs("u1") not in dict(up.sets)


def test_trending_and_similar_lists_are_published_and_deleted_items_leave_them():
    clock = Clock()
    p = Pipeline(Settings(), clock=clock)
    p.process_catalogue([rec(0, {"type": "item_upsert", "event_id": "c1", "item_id": "a", "ts": 1,
                                 "category": "news"}, topic="t.catalogue")])
    events = [click(i, user=f"u{i}", item=x) for i, x in enumerate(["a", "b", "a", "b", "a"])]
    p.process_interactions([rec(i, e) for i, e in enumerate(events)])
    up = dict(p.collect_updates(force=True).sets)
    trending = orjson.loads(up[p.keys.trending()])
    assert [e["item_id"] for e in trending["items"]] == ["a", "b"]
    assert orjson.loads(up[p.keys.trending("news")])["items"][0]["item_id"] == "a"
    p.process_catalogue([rec(1, {"type": "item_delete", "event_id": "c2", "item_id": "a", "ts": 2},
                             topic="t.catalogue")])
    up2 = p.collect_updates(force=True)
    assert [e["item_id"] for e in orjson.loads(dict(up2.sets)[p.keys.trending()])["items"]] == ["b"]
    assert p.keys.similar("a") in up2.deletes


def test_an_items_similar_list_is_made_at_most_once_per_refresh_interval_and_a_deletion_at_once():
    clock = Clock()
    p = Pipeline(Settings(trending_interval_ms=1000, similar_refresh_ms=10_000), clock=clock)
    p.process_interactions([rec(0, click(0, user="u1", item="a")), rec(1, click(1, user="u1", item="b"))])
    first = dict(p.collect_updates().sets)
    assert p.keys.similar("a") in first and p.keys.similar("b") in first
    clock.t += 2000
    p.process_interactions([rec(2, click(2, user="u2", item="a")), rec(3, click(3, user="u2", item="c"))])
    second = dict(p.collect_updates().sets)
    assert p.keys.similar("c") in second and p.keys.similar("a") not in second  # a: made 2 s ago
    assert "a" in p.pending_similar and p.due(clock.t + 1000)  # waiting, not forgotten
    clock.t += 1000
    assert p.keys.similar("a") not in dict(p.collect_updates().sets)
    clock.t += 7000  # 10 s after a's list was made
    third = dict(p.collect_updates().sets)
    assert orjson.loads(third[p.keys.similar("a")])["items"]  # due again
    assert not p.pending_similar
    p.process_interactions([rec(4, click(4, user="u3", item="a"))])
    p.process_catalogue([rec(0, {"type": "item_delete", "event_id": "d1", "item_id": "a", "ts": 5},
                             topic="t.catalogue")])
    clock.t += 1000
    assert p.keys.similar("a") in p.collect_updates().deletes  # a deletion does not wait
    p.process_interactions([rec(5, click(5, user="u3", item="b"))])
    clock.t += 1000
    assert p.keys.similar("b") in dict(p.collect_updates(force=True).sets)  # force: everything pending now


def test_interactions_on_items_the_catalogue_has_not_upserted_are_counted():
    p = Pipeline(Settings(), clock=Clock())
    p.process_catalogue([rec(0, {"type": "item_upsert", "event_id": "c1", "item_id": "a", "ts": 1},
                             topic="t.catalogue")])
    impression = {"type": "impression", "event_id": "i0", "user_id": "u1", "item_ids": ["a", "z"],
                  "request_id": "r0", "ts": 1_700_000_000_000}
    p.process_interactions([rec(0, click(0, item="a")), rec(1, click(1, item="b")), rec(2, click(2, item="b")),
                            rec(3, impression), rec(4, click(1, item="b"))])  # the last one: a duplicate
    assert p.counters["uncatalogued_item_events"] == 2
    p.process_catalogue([rec(1, {"type": "item_upsert", "event_id": "c2", "item_id": "b", "ts": 2},
                             topic="t.catalogue")])
    p.process_interactions([rec(5, click(5, item="b"))])
    assert p.counters["uncatalogued_item_events"] == 2


def test_a_failed_publish_is_requeued_and_written_by_the_next_flush():
    clock = Clock()
    p = Pipeline(Settings(), clock=clock)
    p.process_interactions([rec(0, click(0, user="u1")), rec(1, click(1, user="u2", item="b"))])
    p.process_interactions([rec(2, {"type": "user_delete", "event_id": "d", "user_id": "u2", "ts": 5})])
    failed = p.collect_updates(force=True)
    assert set(failed.users) == {"u1", "u2"}
    assert not p.collect_updates(force=True).users  # nothing pending any more...
    p.requeue(failed)  # ...until the failed publish is put back
    again = p.collect_updates(force=True)
    assert p.keys.recs("u1") in dict(again.sets) and p.keys.recs("u2") in again.deletes
    assert p.keys.similar("a") in dict(again.sets)


def test_trending_is_only_recomputed_when_something_changed():
    clock = Clock()
    p = Pipeline(Settings(trending_interval_ms=1000), clock=clock)
    p.process_interactions([rec(0, click(0))])
    assert p.due()
    p.collect_updates()
    clock.t += 5000
    assert not p.due()  # nothing new: no rewrite of every trending key
    p.process_interactions([rec(1, click(1, item="b"))])
    assert p.due()


def test_while_behind_a_flush_spends_the_smaller_budget_and_the_rest_waits():
    clock = Clock()
    p = Pipeline(Settings(model="learning", recompute_budget_ms=0, recompute_budget_behind_ms=1), clock=clock)
    p.process_interactions([rec(i, click(i, user=f"u{i}", item=f"i{i % 30}")) for i in range(300)])
    p.set_behind(True)
    clock.t += 1000
    behind = p.collect_updates()
    assert 0 < behind.recs < 300 and len(p.pending_users) == 300 - behind.recs  # one chunk of 64, then the budget
    p.set_behind(False)
    clock.t += 1000
    caught_up = p.collect_updates()
    assert caught_up.recs == 300 - behind.recs and not p.pending_users  # no limit once caught up


def test_caught_up_lists_a_budget_left_waiting_are_made_at_once_and_behind_after_the_interval():
    clock = Clock()
    p = Pipeline(Settings(model="learning", recompute_budget_ms=1, recompute_budget_behind_ms=1), clock=clock)
    p.process_interactions([rec(i, click(i, user=f"u{i}", item=f"i{i % 30}")) for i in range(300)])
    clock.t += 1000
    first = p.collect_updates()
    assert 0 < first.recs < 300 and p.lists_deferred  # the budget cut the flush short
    assert p.due()  # not behind: the rest at once, the clock has not moved
    second = p.collect_updates()
    assert second.recs > 0 and len(p.pending_users) == 300 - first.recs - second.recs
    p.set_behind(True)  # behind the stream: the backlog first, lists once per interval
    assert not p.due() and p.collect_updates().recs == 0
    clock.t += p.settings.recompute_interval_ms
    assert p.due()
    p.set_behind(False)
    while p.pending_users:  # caught up: flush after flush until every waiting user has a list
        assert p.due() and p.collect_updates().recs > 0
    assert not p.lists_deferred and not p.due()


def test_the_click_model_samples_impressions_while_behind_or_while_lists_wait():
    clock = Clock()
    p = Pipeline(Settings(model="learning", recompute_budget_ms=1, click_sample_behind=0.1), clock=clock)
    rec_ = p.recommender
    p.process_interactions([rec(i, click(i, user=f"u{i}", item=f"i{i % 30}")) for i in range(300)])
    assert rec_.click_sample == 1.0  # nothing waits yet
    clock.t += 1000
    p.collect_updates()
    assert p.lists_deferred and rec_.click_sample == 0.1  # the budget left lists waiting
    p.set_behind(True)
    p.set_behind(False)  # caught up with the stream, but lists still wait
    assert rec_.click_sample == 0.1 and rec_.behind  # overloaded: fewer items re-indexed per refresh too
    while p.pending_users:
        p.collect_updates()
    assert not p.lists_deferred and rec_.click_sample == 1.0  # every list made: full learning again
    p.set_behind(True)
    assert rec_.click_sample == 0.1 and rec_.behind
    p.set_behind(False)
    assert rec_.click_sample == 1.0


def test_a_failed_publish_is_retried_after_the_interval_not_at_once():
    clock = Clock()
    p = Pipeline(Settings(model="learning", recompute_budget_ms=1), clock=clock)
    p.process_interactions([rec(i, click(i, user=f"u{i}", item=f"i{i % 30}")) for i in range(300)])
    clock.t += 1000
    updates = p.collect_updates()
    assert p.lists_deferred
    p.requeue(updates)  # Redis was down
    assert len(p.pending_users) == 300 and not p.due()  # no back-to-back flushes against a dead Redis
    clock.t += p.settings.recompute_interval_ms
    assert p.due()


def test_a_learning_pipeline_leaves_no_cyclic_garbage():
    """The stream engine freezes what each batch leaves (``gc.freeze``): frozen objects are never
    collected, so garbage in reference cycles would leak. Refcounting must free everything."""
    import gc
    import zlib

    from freshrec.streams.datasets.synthetic import synthetic_events

    events = list(synthetic_events(n_users=300, n_items=200, n_events=6000, seed=4))
    clock = Clock(max(e["ts"] for e in events))
    p = Pipeline(Settings(model="learning", recompute_budget_ms=0), clock=clock, partials=False)
    catalogue = [e for e in events if e["type"].startswith("item_")]
    p.process_catalogue([rec(i, e, topic="t.catalogue") for i, e in enumerate(catalogue)])
    inter = [e for e in events if not e["type"].startswith("item_")]
    inter += [{**e, "event_id": "bad"} for e in inter[:5]] + [{"type": "nope"}]  # dead letters too
    records = [rec(i, e, partition=zlib.crc32(str(e.get("user_id")).encode()) % 4) for i, e in enumerate(inter)]
    gc.collect()
    gc.disable()
    try:
        for i in range(0, len(records), 500):
            p.set_behind(i % 1000 == 0)
            p.process_interactions(records[i:i + 500])
            clock.t += 1000
            p.collect_updates(force=True)
        assert p.counters["recomputes"] > 100 and p.counters["deadletter:unknown_type"] == 1
        assert gc.collect() == 0  # nothing the pipeline dropped was left to the cycle collector
    finally:
        gc.enable()


def _docs(p, updates):
    prefix = p.keys.recs("")
    return {k[len(prefix):]: orjson.loads(v) for k, v in updates.sets if k.startswith(prefix)}


def _clicked(n_users=300, ranked=False, **settings):
    """A learning pipeline with a 1 ms list budget where ``n_users`` users clicked once, a second
    ago (``ranked``: and were all ranked since)."""
    clock = Clock()
    p = Pipeline(Settings(model="learning", recompute_budget_ms=1, **settings), clock=clock)
    users = [f"u{i}" for i in range(n_users)]
    p.process_interactions([rec(i, click(i, user=u, item=f"i{i % 30}")) for i, u in enumerate(users)])
    clock.t += 1000
    while ranked and p.pending_users:
        p.collect_updates()
    return clock, p, users


def _click_again(p, users, item, ts):
    """Every user clicks again (``item(i)``: the i-th user's item) at ``ts``."""
    base = 1_000_000
    p.process_interactions([rec(base + i, click(base + i, user=u, item=item(i), ts=ts)) for i, u in enumerate(users)])


def test_users_a_budget_leaves_waiting_get_a_quick_list_then_a_ranked_one_that_keeps_its_time():
    clock, p, users = _clicked()
    first = p.collect_updates()
    assert 0 < first.recs < 300 and first.quick  # the budget cut the flush short: quick lists for some
    new = _docs(p, first)[first.quick[0]]  # no ranked list to patch yet: trending's, patched
    trending = {i for i, _ in p.trending.global_list}
    assert new["tier"] == "quick" and {e["item_id"] for e in new["items"]} <= trending
    assert first.quick[0] not in first.users and first.quick[0] in p.pending_users
    while p.pending_users:
        clock.t += 50
        p.collect_updates()
    # every user ranked; now each clicks again, at a later event time
    ts = clock.t
    _click_again(p, users, lambda i: f"i{(i + 7) % 30}", ts)
    docs: dict[str, list[dict]] = {u: [] for u in users}
    samples = 0
    while p.pending_users:
        clock.t += p.settings.recompute_interval_ms
        flush = p.collect_updates()
        assert flush.recs + len(flush.quick) > 0 and not set(flush.users) & set(flush.quick)
        assert len(flush.ranked_freshness_ms) == flush.recs
        samples += len(flush.freshness_ms)
        for u, d in _docs(p, flush).items():
            assert d["generated_at"] == clock.t and d["event_ts"] == ts
            docs[u].append(d)
    assert samples == 300  # one first reflection per user, ranked or quick
    quick = [u for u in users if docs[u][0]["tier"] == "quick"]
    assert quick and all(docs[u][0]["reflected_at"] == docs[u][0]["generated_at"] for u in users)
    for u in quick:  # what he just clicked left his list; the ranked list that follows keeps the time
        assert f"i{(users.index(u) + 7) % 30}" not in [e["item_id"] for e in docs[u][0]["items"]]
        assert [d["tier"] for d in docs[u]] == ["quick", "ranked"]
        assert docs[u][1]["reflected_at"] == docs[u][0]["generated_at"] < docs[u][1]["generated_at"]


def test_a_quick_list_that_failed_to_publish_is_made_again_and_a_deleted_user_has_none():
    clock, p, users = _clicked(200, ranked=True)
    _click_again(p, users, lambda i: "i3", clock.t)
    p.process_interactions([rec(2_000_000, {"type": "user_delete", "event_id": "d", "user_id": "u5", "ts": clock.t})])
    clock.t += 1000
    failed = p.collect_updates()
    assert failed.quick and "u5" not in failed.quick and "u5" not in _docs(p, failed)
    assert p.served.get("u5") is None  # deletion reaches the lists kept for quick ones
    p.requeue(failed)  # Redis was down
    docs, first = {}, 0
    while p.unreflected:
        clock.t += p.settings.recompute_interval_ms
        again = p.collect_updates()
        docs.update(_docs(p, again))
        first += len(again.freshness_ms)
    assert set(failed.quick) <= set(docs)  # each reflected again, quick or ranked
    assert first == len(docs)  # and counted once as a first reflection


def test_quick_lists_can_be_switched_off():
    clock, p, users = _clicked(200, ranked=True, quick_lists=False)
    _click_again(p, users, lambda i: "i3", clock.t)
    clock.t += 1000
    flush = p.collect_updates()
    assert flush.recs < 200 and flush.quick == [] and len(_docs(p, flush)) == flush.recs


def test_quick_lists_go_on_a_little_behind_the_stream_but_not_deep_in_a_backlog():
    from freshrec.state.pipeline import QUICK_MAX_LAG_MS

    clock, p, users = _clicked(recompute_budget_behind_ms=1)
    p.set_behind(True, lag_ms=QUICK_MAX_LAG_MS + 1)
    assert p.collect_updates().quick == []  # deep in a backlog: catching up first
    p.set_behind(True, lag_ms=QUICK_MAX_LAG_MS // 4)
    clock.t += 1000
    assert p.collect_updates().quick  # a few hundred ms behind: active users still get quick lists


def test_a_user_not_ranked_yet_gets_trending_patched_again_with_his_next_events():
    clock, p, users = _clicked()
    first = p.collect_updates()
    user = first.quick[-1]  # the oldest of those given a quick list: not ranked for a while
    assert not p.served.get(user).ranked
    p.process_interactions([rec(300, click(300, user=user, item="i29", ts=clock.t))])
    again = Updates()
    p._quick_lists(clock.t, again, budget_s=60.0, skip=set())  # what a flush does before ranking
    doc = _docs(p, again)[user]
    assert doc["tier"] == "quick" and len(doc["items"]) >= p.settings.recs_k // 2  # trending, not an empty base
    assert "i29" not in [e["item_id"] for e in doc["items"]]


def test_users_whose_events_came_long_ago_wait_for_their_ranked_list():
    from freshrec.state.pipeline import QUICK_MAX_WAIT_MS

    clock = Clock()
    p = Pipeline(Settings(model="learning", recompute_budget_ms=1), clock=clock)
    p.process_interactions([rec(i, click(i, user=f"u{i}", item=f"i{i % 30}")) for i in range(300)])
    clock.t += QUICK_MAX_WAIT_MS + 1  # a backlog: nobody got a list within the wait
    stale = p.collect_updates()
    assert stale.recs > 0 and stale.quick == []
    p.process_interactions([rec(300 + i, click(300 + i, user=f"n{i}", item="i3", ts=clock.t)) for i in range(300)])
    clock.t += p.settings.recompute_interval_ms
    fresh = p.collect_updates()
    assert fresh.quick and all(u.startswith("n") for u in fresh.quick)  # the users active now
