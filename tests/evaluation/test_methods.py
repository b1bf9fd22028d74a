"""The compared methods: fast paths equal the reference computations, errors are explicit."""

from __future__ import annotations

import random
import sys

import numpy as np
import pytest

from freshrec.evaluation import cli as eval_cli
from freshrec.evaluation import methods as me
from freshrec.settings import Settings

T0 = 1_700_000_000_000


def positive(user: str, item: str, ts: int, etype: str = "click", n: int = 0) -> dict:
    return {"v": 1, "type": etype, "event_id": f"{etype}-{user}-{item}-{ts}-{n}", "user_id": user,
            "item_id": item, "ts": ts, **({"value": 4} if etype == "rating" else {})}


def random_events(n: int = 600, users: int = 20, items: int = 90, seed: int = 1, span_ms: int = 200_000) -> list[dict]:
    rng = random.Random(seed)
    ts = sorted(T0 + rng.randrange(span_ms) for _ in range(n))
    weights = [1 / (1 + i) for i in range(items)]
    return [positive(f"u{rng.randrange(users)}", f"i{rng.choices(range(items), weights)[0]}", t,
                     rng.choice(["click", "rating", "conversion"]), n=j) for j, t in enumerate(ts)]


def test_top_k_indices_excludes_and_orders():
    s = np.array([0.5, 2.0, -np.inf, 2.0, 1.0])
    assert me.top_k_indices(s, 3) == [1, 3, 4]  # ties: lower index first
    assert me.top_k_indices(s, 10) == [1, 3, 4, 0]  # -inf never returned
    assert me.top_k_indices(s, 2, exclude=[1]) == [3, 4]
    assert s[1] == 2.0  # not modified
    assert me.top_k_indices(np.zeros(0), 5) == []


@pytest.mark.parametrize("half_life_s", [1.0, 60.0, 0.0])
def test_popularity_fast_ranking_equals_item_stats_top(half_life_s):
    """The time-invariant key gives exactly ItemStats.top's order (with rebasing at hl=1s)."""
    m = me.PopularityMethod(half_life_s=half_life_s)
    rng = random.Random(5)
    for i, e in enumerate(random_events(800, span_ms=400_000)):
        m.learn_one(e)
        if i % 50 == 49:
            exclude = set(rng.sample(sorted(m.stats.rows), 5))
            ref = m.stats.top(10, m.now_ms, keep=lambda x: x not in exclude)
            got = m.recommend_one("anyone", 10, exclude)
            assert not exclude & set(got)
            # same scores in the same order (equal scores may be ordered differently: no decay)
            assert [m.stats.popularity(i, m.now_ms) for i in got] == pytest.approx([s for _, s in ref])
            if half_life_s:
                assert got == [item for item, _ in ref]


def test_popularity_counts_impressions_but_only_engagements_make_items_popular():
    m = me.PopularityMethod()
    m.learn_one({"type": "impression", "user_id": "u", "request_id": "r", "item_ids": ["a", "b"], "ts": T0,
                 "event_id": "i"})
    assert m.recommend_one("u", 5, set()) == []
    m.learn_one(positive("u", "b", T0 + 1))
    assert m.recommend_one("u", 5, set()) == ["b"]
    assert m.stats.count("a", "impression") == 1
    assert m.score_one("u", ["a", "b"])[0] == 0.0


def test_covis20_by_hand():
    m = me.CoVisitationMethod()
    for item in ("a", "b", "c"):  # pairs a-b, a-c, b-c once each
        m.learn_one(positive("u1", item, T0))
    m.learn_one(positive("u2", "a", T0))  # u2: last = [a]
    # b and c both co-occur once with a; popularity (b, c: 1) ties -> index order
    assert m.recommend_one("u2", 2, {"a"}) == ["b", "c"]
    m.learn_one(positive("u3", "a", T0))
    m.learn_one(positive("u3", "c", T0))  # a-c now 2
    assert m.recommend_one("u2", 2, {"a"}) == ["c", "b"]
    assert m.score_one("u2", ["b", "c", "zz"]) == pytest.approx([1 + 0.5 * 1 / 4, 2 + 0.5 * 2 / 4, 0.0])
    # a new user gets the popularity order (tie-break term only)
    assert m.recommend_one("new", 3, set()) == ["a", "c", "b"]


def test_covis20_window_is_the_last_20_items():
    m = me.CoVisitationMethod(window=2)
    for item in ("a", "b", "c", "d"):
        m.learn_one(positive("u1", item, T0))
    j = m.index.get
    assert m.co[j("d"), j("c")] == m.co[j("d"), j("b")] == 1
    assert m.co[j("d"), j("a")] == 0  # a was out of d's window of 2
    assert m.co[j("c"), j("a")] == 1  # but within c's
    assert list(m.recent["u1"]) == [j("c"), j("d")]


def test_covis20_sparse_mode_gives_the_dense_results():
    events = random_events(500, items=60)
    dense, sparse = me.CoVisitationMethod(), me.CoVisitationMethod(max_dense_items=8)
    for i, e in enumerate(events):
        dense.learn_one(e)
        sparse.learn_one(e)
        if i % 25 == 0:
            u = e["user_id"]
            assert dense.recommend_one(u, 10, {e["item_id"]}) == sparse.recommend_one(u, 10, {e["item_id"]})
    assert sparse.rows is not None and dense.rows is None


def test_funkmf_matrix_tracks_river_predict_one():
    m = me.FunkMFMethod(n_factors=4)
    events = random_events(400, items=150)  # > 64 items: the matrix grows and views are re-pointed
    events.insert(200, {"type": "impression", "user_id": "u1", "request_id": "r", "item_ids": ["i3", "new"],
                        "ts": events[199]["ts"], "event_id": "imp"})
    for e in events:
        m.learn_one(e)
    n = len(m.index)
    assert n > 64
    for user in ("u1", "u7"):
        scores = m.q[:n] @ m.model.u_latents[user]
        ref = [m.model.predict_one(user, item) for item in m.index.ids]
        assert np.allclose(scores, ref)
        top = m.recommend_one(user, 5, set())
        assert top == [m.index.ids[i] for i in np.argsort(-np.asarray(ref), kind="stable")[:5]]
    assert m.score_one("u1", ["i3", "never-seen"])[0] == pytest.approx(m.model.predict_one("u1", "i3"))


def test_item_ctr_by_hand():
    m = me.ItemCTRMethod(prior_clicks=1, prior_impressions=3)
    m.learn_one({"type": "impression", "user_id": "u", "request_id": "r", "item_ids": ["a", "b"], "ts": T0,
                 "event_id": "i"})
    m.learn_one(positive("u", "a", T0 + 1))
    assert m.score_one("u", ["a", "b", "c"]) == pytest.approx([2 / 5, 1 / 5, 1 / 4])
    assert m.recommend_one("u", 5, set()) == ["a", "b"]  # c never shown


def test_freshrec_wraps_the_pipeline_and_accepts_old_and_future_timestamps():
    m = me.FreshrecMethod(settings=Settings(), refresh_every=5)
    m.learn_one({"v": 1, "type": "item_upsert", "event_id": "c1", "item_id": "a", "category": "x", "ts": 0})
    old = 852_076_800_000  # 1997
    events = [positive("u1", "a", old), positive("u1", "b", old + 1), positive("u2", "a", old + 2),
              positive("u3", "b", 4_102_444_800_000)]  # 2100: far past the wall clock
    for e in events:
        m.learn_one(e)
    assert m.pipeline.counters["events:click"] == 4
    assert m.recommend_one("u2", 5, {"a"}) == [i for i, _ in m.pipeline.recommend("u2", 5)]
    assert m.recommend_one("u2", 5, {"a"}) == ["b"]
    # offsets increase per partition, partitions are stable (crc32, not hash())
    assert me.stable_partition("u1", 8) == me.stable_partition("u1", 8)
    assert sum(off + 1 for (topic, _), off in m._offsets.items() if topic.endswith("interactions")) == 4


def test_freshrec_ranked_every_serves_quick_lists_of_the_last_ranked_one_in_between():
    m = me.FreshrecMethod(settings=Settings(recs_k=5), refresh_every=5, ranked_every_s=60)  # lists of 5
    items = ["c", "d"] + [f"p{n}" for n in range(10)]
    for n, item in enumerate(items):
        m.learn_one({"v": 1, "type": "item_upsert", "event_id": f"c{n}", "item_id": item, "category": "x", "ts": T0})
    for n in range(200):  # popular items, clicked by many users
        m.learn_one(positive(f"v{n}", f"p{n % 10}", T0 + n, n=n))
    for n in range(4):  # c and d, co-visited by two users
        m.learn_one(positive(f"u{n % 2 + 2}", "cd"[n // 2], T0 + 200 + n, n=n))
    first = m.recommend_one("u1", 5, set())
    assert m.tests == {"ranked": 1} and "d" not in first
    m.learn_one(positive("u1", "c", T0 + 1000))  # 1 s of stream time later: within the 60 s
    second = m.recommend_one("u1", 5, {"c"})
    assert m.tests == {"ranked": 1, "quick": 1} and "c" not in second
    assert second[:2] == [first[0], "d"]  # c's co-visited neighbour in the 2nd slot, the ranked best first
    m.learn_one(positive("u1", "e", T0 + 120_000))  # past the 60 s: ranked again
    m.recommend_one("u1", 5, {"c", "e"})
    assert m.tests == {"ranked": 2, "quick": 1} and m.stats()["tests_by_tier"] == {"ranked": 2, "quick": 1}


def test_freshrec_rejected_event_is_an_error_not_a_silent_drop():
    m = me.FreshrecMethod(settings=Settings())
    with pytest.raises(me.MethodError, match="missing_field"):
        m.learn_one({"type": "click", "event_id": "x", "user_id": "u", "ts": T0})


def test_rtrec_learns_in_batches_and_recommends():
    m = me.make_method("rtrec:batch_size=50")
    assert m.recommend_one("u1", 5, set()) == []  # nothing fitted yet
    for e in random_events(300, items=40):
        m.learn_one(e)
    assert m.fits == 6
    recs = m.recommend_one("u1", 5, {"i0"})
    assert 0 < len(recs) <= 5 and "i0" not in recs
    # an unknown user gets rtrec's hot items as item ids (rtrec itself returns internal indices)
    cold = m.recommend_one("never-seen", 5, {"i0"})
    assert len(cold) == 5 and all(isinstance(i, str) and i.startswith("i") for i in cold) and "i0" not in cold
    assert m.stats()["unknown_user_requests"] == 1


def test_rtrec_missing_fails_clearly(monkeypatch):
    monkeypatch.setitem(sys.modules, "rtrec.models", None)  # import now raises ImportError
    with pytest.raises(me.MethodError, match="pip install rtrec"):
        me.make_method("rtrec")


def test_method_specs_and_labels():
    assert me.parse_method_specs("a, b:x=1,y=2 ,c") == ["a", "b:x=1,y=2", "c"]
    assert me.split_spec("Popularity:half_life_s=3600,flag=true") == ("popularity",
                                                                      {"half_life_s": 3600, "flag": True})
    assert me.method_label("popularity:half_life_s=3600") == "popularity(half_life_s=3600)"
    m = me.make_method("popularity:half_life_s=3600")
    assert m.name == "popularity(half_life_s=3600)" and m.half_life_ms == 3_600_000
    with pytest.raises(me.MethodError, match="unknown method"):
        me.make_method("nope")
    with pytest.raises(me.MethodError, match="bad parameters"):
        me.make_method("covis20:nope=1")
    with pytest.raises(me.MethodError, match="unknown setting"):
        me.make_method("freshrec:nope=1", Settings())
    f = me.make_method("freshrec:half_life_s=60", Settings())
    assert f.settings.half_life_s == 60
    with pytest.raises(ValueError):
        me.parse_method_specs("x=1,a")


def test_cli_default_methods_match():
    assert eval_cli.DEFAULT_METHODS == me.DEFAULT_METHODS
    assert all(isinstance(me.make_method(s, Settings()), me.Method) for s in me.DEFAULT_METHODS)
