"""The learning recommender through the worker's Pipeline, without a broker."""

import pickle

import numpy as np
import orjson
import pytest

from freshrec.settings import Settings
from freshrec.state.clickmodel import FEATURES, ClickModel
from freshrec.state.pipeline import Pipeline, Record

T0 = 1_700_000_000_000
INTER, CAT = "t.interactions", "t.catalogue"


class Feed:
    """Feeds events to a Pipeline as the worker does (increasing offsets per topic)."""

    def __init__(self, **settings):
        self.now = T0
        self.p = Pipeline(Settings(**settings), clock=lambda: self.now)
        self.offsets = {INTER: 0, CAT: 0}
        self.n = 0

    def send(self, etype, ts=None, **fields):
        self.n += 1
        event = {"type": etype, "event_id": f"e{self.n}", "ts": ts or self.now, **fields}
        topic = CAT if etype in ("item_upsert", "item_delete") else INTER
        record = Record(topic, 0, self.offsets[topic], orjson.dumps(event))
        self.offsets[topic] += 1
        if topic == CAT:
            result = self.p.process_catalogue([record])
        else:
            result = self.p.process_interactions([record])
        assert not result.rejected, result.rejected
        self.now += 1000
        return event

    def refresh(self):
        self.p.collect_updates(force=True)
        self.p.recommender.refresh_index()

    def recs(self, user, k=10):
        return [i for i, _ in self.p.recommend(user, k)]


def _community(feed, users=30, items=40, rounds=2):
    """Users in two taste groups: even users click even items, odd users odd items."""
    for r in range(rounds):
        for u in range(users):
            for j in range(3):
                item = (u % 2) + 2 * ((u + r * 3 + j) % (items // 2))  # 3 x rounds of items // 2
                feed.send("click", user_id=f"u{u}", item_id=f"i{item}")
    feed.refresh()


def test_click_model_numpy_scores_equal_rivers_and_learning_moves_them():
    m = ClickModel(lr=0.1)
    x = np.array([[0.5, 1.0, -3.0, 0.2, 0.1, 0.0, 0.3, 0.4, 0.0, 0.7, 0.9, 0.6]])
    assert m.predict_proba_many(x)[0] == pytest.approx(m.predict_proba_one(x[0]))
    before = m.predict_proba_one(x[0])
    for _ in range(50):
        m.learn_one(x[0], 1)
    assert m.predict_proba_one(x[0]) > before
    assert m.predict_proba_many(x)[0] == pytest.approx(m.predict_proba_one(x[0]))
    assert len(FEATURES) == x.shape[1] and m.n_learned == 50 and m.n_positive == 50


def test_learned_lists_follow_the_users_taste_and_exclude_seen_items():
    feed = Feed(explore_share=0.0, diversity_max_share=1.0)
    _community(feed)
    for u in ("u0", "u1"):
        recs = feed.recs(u, 4)
        seen = feed.p.features.user(u)["seen"]
        assert recs and not set(recs) & set(seen)
        parity = int(u[1:]) % 2
        assert sum(int(i[1:]) % 2 == parity for i in recs) >= 3, recs


def test_a_new_item_is_served_before_its_first_click_and_a_deleted_one_never():
    feed = Feed(explore_share=0.2)
    _community(feed)
    feed.send("item_upsert", item_id="new", category="c", tags=["t"], text="brand new thing")
    feed.refresh()
    with_new = [u for u in range(30) if "new" in feed.recs(f"u{u}")]
    assert len(with_new) == 30  # the only fresh item: every list explores it
    assert feed.p.features.item_stats.get("new") is None  # no interaction names it yet
    feed.send("item_delete", item_id="new")
    feed.send("item_delete", item_id="i0")
    feed.refresh()
    assert not any({"new", "i0"} & set(feed.recs(f"u{u}")) for u in range(30))


def test_at_most_the_configured_share_of_a_list_comes_from_one_category():
    feed = Feed(explore_share=0.0, diversity_max_share=0.3)
    for i in range(40):  # half the catalogue in one category, the rest spread over ten
        feed.send("item_upsert", ts=T0 - 10 * 86_400_000, item_id=f"i{i}",
                  category="big" if i % 2 == 0 else f"c{i % 10}")
    _community(feed)
    uncapped = Feed(explore_share=0.0, diversity_max_share=1.0)
    for i in range(40):
        uncapped.send("item_upsert", ts=T0 - 10 * 86_400_000, item_id=f"i{i}",
                      category="big" if i % 2 == 0 else f"c{i % 10}")
    _community(uncapped)
    cats = [feed.p.catalogue.category(i) for i in feed.recs("u0", 10)]
    free = [uncapped.p.catalogue.category(i) for i in uncapped.recs("u0", 10)]
    assert free.count("big") > 3  # u0 likes even items: all "big"
    assert len(cats) == 10 and cats.count("big") == 3, cats


def test_impressions_teach_the_click_model_once_their_click_window_has_passed():
    feed = Feed(click_window_s=60.0)
    _community(feed)
    clicks = feed.p.recommender.clicks
    learned0, pos0 = clicks.n_learned, clicks.n_positive
    feed.send("impression", user_id="u0", request_id="r1", item_ids=["i2", "i4", "i1"])
    feed.send("click", user_id="u0", item_id="i4", request_id="r1", position=1)
    feed.refresh()
    assert clicks.n_learned == learned0  # still inside the window: a late click may come
    feed.now += 120_000
    feed.send("dismiss", user_id="u5", item_id="i3")  # moves stream time past the window
    feed.refresh()
    assert clicks.n_learned == learned0 + 3 and clicks.n_positive == pos0 + 1


def test_while_behind_the_click_model_learns_a_sample_of_impressions_and_their_clicks_only():
    feed = Feed(click_window_s=60.0, click_sample_behind=0.25)
    _community(feed)
    rec, clicks = feed.p.recommender, feed.p.recommender.clicks
    feed.p.set_behind(True)
    assert rec.click_sample == 0.25
    learned0, pos0 = clicks.n_learned, clicks.n_positive
    v0 = rec.mf.user_vector("u0")
    for r in range(200):
        feed.send("impression", user_id="u0", request_id=f"b{r}", item_ids=["i2", "i4", "i1"])
        feed.send("click", user_id="u0", item_id="i4", request_id=f"b{r}", position=1)
    sampled = len(rec.pending)
    assert 25 <= sampled <= 80, sampled  # about a quarter of the 200 slates, by request id
    assert len(rec.unsampled) == 200 - sampled
    assert rec.counters["positives_retrieved"] + rec.counters["positives_not_retrieved"] == 0
    assert not np.allclose(rec.mf.user_vector("u0"), v0)  # the MF model still learns every click
    feed.p.set_behind(False)
    assert rec.click_sample == 1.0
    feed.send("impression", user_id="u0", request_id="caught-up", item_ids=["i2", "i4", "i1"])
    assert "caught-up" in rec.pending  # caught up: every slate again
    feed.now += 120_000
    feed.send("dismiss", user_id="u5", item_id="i3")
    feed.refresh()
    assert clicks.n_learned == learned0 + 3 * (sampled + 1)  # the sampled slates, each item once
    assert clicks.n_positive == pos0 + sampled  # and exactly their clicks


def test_unknown_users_and_items_never_crash_and_get_a_list():
    feed = Feed()
    _community(feed)
    assert feed.recs("nobody-knows-me")
    probs = feed.p.recommender.score_items("stranger", None, ["never-seen", "i0"])
    assert probs.shape == (2,) and np.all((probs > 0) & (probs < 1))
    feed.send("impression", user_id="stranger", request_id="r9", item_ids=["never-seen"])
    feed.send("user_delete", user_id="u0")
    feed.refresh()
    assert not feed.p.recommender.mf.knows_user("u0")
    assert "u0" not in feed.p.recommender.published


def test_a_dismissal_lowers_the_items_score_for_that_user():
    feed = Feed()
    _community(feed)
    mf = feed.p.recommender.mf
    before = mf.predict_one("u0", "i2")
    feed.send("dismiss", user_id="u0", item_id="i2")
    assert mf.predict_one("u0", "i2") < before


def test_state_round_trip_gives_the_same_lists(tmp_path):
    feed = Feed(explore_share=0.0)
    _community(feed)
    path = tmp_path / "index.bin"
    feed.p.recommender.index.save(path)
    state = pickle.loads(pickle.dumps(feed.p.to_state()))
    from freshrec.state.ann import ItemIndex

    restored = Pipeline(feed.p.settings, clock=lambda: feed.now)
    restored.load_state(state, ItemIndex.load(path))
    for u in ("u0", "u1", "u7", "newcomer"):
        assert restored.recommend(u, 10) == feed.p.recommend(u, 10)
    rebuilt = Pipeline(feed.p.settings, clock=lambda: feed.now)
    rebuilt.load_state(state, None)  # no saved graph: rebuilt from the vectors
    assert [i for i, _ in rebuilt.recommend("u0", 10)] == [i for i, _ in feed.p.recommend("u0", 10)]
    with pytest.raises(ValueError, match="model"):
        Pipeline(feed.p.settings.replace(model="covis")).load_state(state)


def _twins(**settings):
    """A trained pipeline and an exact copy of it (same state, same random generators)."""
    import copy

    feed = Feed(**settings)
    _community(feed)
    feed.send("item_upsert", item_id="new", category="c", tags=["t"], text="brand new thing")
    feed.send("impression", user_id="u3", request_id="r1", item_ids=["i2", "i4", "new"])
    feed.refresh()
    return feed, copy.deepcopy(feed.p)


@pytest.mark.parametrize("filter_threshold", [256, 3])  # 3: users past it take the filtered query
def test_publish_many_gives_the_lists_and_remembers_what_publish_one_does(filter_threshold):
    feed, twin = _twins()
    users = [f"u{u}" for u in range(30)] + ["newcomer", "u3"]
    for p in (feed.p, twin):
        p.recommender.index.filter_threshold = filter_threshold
    one = [feed.p.recommender.publish_one(u, feed.p.features.user(u), 10) for u in users]
    many = twin.recommender.publish_many([(u, twin.features.user(u)) for u in users], 10)
    assert many == one and all(one[:30])
    a, b = feed.p.recommender.published, twin.recommender.published
    assert list(a) == list(b) and set(users) - {"newcomer"} <= set(a)
    for u in a:  # candidates, sampled negatives and the rank references
        assert np.array_equal(a[u][0], b[u][0]) and np.array_equal(a[u][1], b[u][1])
        assert all(np.array_equal(x, y) for x, y in zip(a[u][2], b[u][2]))
    assert twin.recommender.publish_many([], 10) == []


def test_publish_many_lists_exclude_seen_and_deleted_items_and_feed_the_click_model():
    feed, _ = _twins(explore_share=0.0)
    rec = feed.p.recommender
    feed.send("item_delete", item_id="i0")
    feed.refresh()
    users = [f"u{u}" for u in range(30)]
    lists = rec.publish_many([(u, feed.p.features.user(u)) for u in users], 10)
    for u, scored in zip(users, lists):
        items = [i for i, _ in scored]
        assert len(items) == 10 and "i0" not in items and not set(items) & set(feed.p.features.user(u)["seen"])
        assert all(0.0 < p < 1.0 for _, p in scored)
    learned = rec.clicks.n_learned
    item = lists[0][0][0]
    feed.send("click", user_id="u0", item_id=item)  # a positive among the remembered candidates
    assert rec.clicks.n_learned > learned and rec.counters["positives_retrieved"] >= 1


def test_click_model_learn_many_takes_rivers_steps():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, len(FEATURES))) * 3.0  # large enough to reach the clipped log-loss branches
    y = (rng.random(500) < 0.2).astype(int).tolist()
    one, many = ClickModel(lr=0.05), ClickModel(lr=0.05)
    for row, label in zip(X, y):
        one.learn_one(row, label)
    many.learn_many(X, y)
    assert many.weights == pytest.approx(one.weights, rel=1e-12, abs=1e-12)
    assert (many.n_learned, many.n_positive) == (one.n_learned, one.n_positive)
    assert many.model.optimizer.n_iterations == one.model.optimizer.n_iterations


def test_item_table_codes_grow_and_label_codes_follow_index_rebuilds():
    from freshrec.state.ann import ItemIndex
    from freshrec.state.ranking import ItemTable, LabelCodes

    table = ItemTable(4, lambda item: (None, "c" if item.endswith("0") else None, item == "x1", None), capacity=16)
    ids = [f"x{i}" for i in range(40)]  # past the initial capacity: arrays double
    codes = table.codes(ids)
    assert codes.tolist() == list(range(40)) and table.codes({"x3": 1, "new": 2}).tolist() == [3, 40]
    assert table.ids[codes].tolist() == ids and table.deleted[1] and not table.deleted[2]
    assert table.cat[codes[[0, 1, 10]]].tolist() == [1, 0, 1]
    assert table.marked(codes[:5], np.array([1, 3])).tolist() == [False, True, False, True, False]
    assert not table._mark.any()
    index = ItemIndex(3)
    index.upsert_many(ids[:5], np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1]] + 0.1)
    labels = LabelCodes()
    assert labels(index, table, np.array([[4, -1, 0]])).tolist() == [[4, -1, 0]]
    index.rebuild(["x7", "x8"], np.ones((2, 3), dtype=np.float32))  # labels start again at 0
    assert labels(index, table, np.array([0, 1])).tolist() == [7, 8]


def test_a_new_item_is_explored_in_the_next_lists_without_waiting_for_a_refresh():
    """An upsert followed at once by the users' events: the lists computed in the same flush (before
    the periodic refresh) already give the new item an exploration slot."""
    now = [T0]
    p = Pipeline(Settings(), clock=lambda: now[0])
    offsets = {INTER: 0, CAT: 0}

    def send(topic, events):
        recs = [Record(topic, 0, offsets[topic] + n, orjson.dumps(e)) for n, e in enumerate(events)]
        offsets[topic] += len(events)
        result = (p.process_catalogue if topic == CAT else p.process_interactions)(recs)
        assert not result.rejected

    old = T0 - 5 * 86_400_000
    send(CAT, [{"type": "item_upsert", "event_id": f"c{i}", "ts": old, "item_id": f"old{i}", "category": "news",
                "text": f"old story {i}"} for i in range(30)])
    send(INTER, [{"type": "click", "event_id": f"a{u}-{i}", "ts": T0, "user_id": f"u{u}", "item_id": f"old{(u + i) % 30}"}
                 for u in range(40) for i in range(5)])
    p.collect_updates(force=True)
    send(CAT, [{"type": "item_upsert", "event_id": "new", "ts": T0 + 1, "item_id": "brand-new", "category": "news",
                "text": "a story nobody has clicked yet"}])
    send(INTER, [{"type": "click", "event_id": f"b{u}", "ts": T0 + 2, "user_id": f"u{u}", "item_id": f"old{(u + 7) % 30}"}
                 for u in range(40)])
    now[0] += 250  # a recompute is due; the trending/explore refresh (1 s interval) is not
    updates = p.collect_updates()
    docs = [orjson.loads(v) for k, v in updates.sets if k.startswith(p.keys.recs(""))]
    assert len(docs) == 40
    assert all(any(e["item_id"] == "brand-new" for e in d["items"]) for d in docs)


def _slate_cases(feed):
    rec = feed.p.recommender
    feed.send("item_upsert", item_id="late", category="brand-new", tags=["x"], text="a late item")
    users = ["u0", "u1", "u7", "stranger"]
    slates = [["i0", "i2", "i4", "i1"], ["i1", "never-seen", "i3", "other-unknown"], ["late", "i5"], ["i0", "i9", "i8"]]
    ctxs = [rec.context(u, feed.p.features.user(u), only=items) for u, items in zip(users, slates)]
    return rec, ctxs, slates


def test_slates_featurised_together_get_the_rows_of_featurising_each_alone():
    feed = Feed()
    _community(feed)
    rec, ctxs, slates = _slate_cases(feed)
    alone = [rec.feature_matrix(ctx, items, positions=list(range(len(items)))) for ctx, items in zip(ctxs, slates)]
    together = rec._features_many([rec._slate(ctx, items, list(range(len(items)))) for ctx, items in zip(ctxs, slates)])
    assert len(together) == len(alone)
    for a, b in zip(alone, together):
        assert a.shape == b.shape
        assert np.allclose(a, b, atol=1e-6), (a - b)
    assert np.abs(np.concatenate(alone)).sum() > 0 and len({r.tobytes() for r in np.concatenate(alone)}) > 5


def test_a_batch_of_disjoint_slates_learns_the_rows_one_at_a_time_gives():
    def run(batched):
        feed = Feed(click_window_s=60.0)
        _community(feed)
        events = [{"type": "impression", "event_id": f"imp{u}", "ts": feed.now, "user_id": f"u{u}",
                   "request_id": f"r{u}", "item_ids": [f"i{2 * u}", f"i{2 * u + 1}"]} for u in range(6)]
        records = [Record(INTER, 0, feed.offsets[INTER] + n, orjson.dumps(e)) for n, e in enumerate(events)]
        for batch in ([records] if batched else [[r] for r in records]):
            assert not feed.p.process_interactions(batch).rejected
        pending = feed.p.recommender.pending
        return [pending[f"r{u}"].X for u in range(6)], feed.p.recommender.mf.to_state()

    (xa, ma), (xb, mb) = run(batched=False), run(batched=True)
    for a, b in zip(xa, xb):
        assert a is not None and b is not None and np.allclose(a, b, atol=1e-6)
    assert np.allclose(ma["user_factors"], mb["user_factors"], atol=1e-6)
    assert np.allclose(ma["item_factors"], mb["item_factors"], atol=1e-6)


def test_candidates_featurised_together_get_the_rows_of_featurising_each_alone():
    from freshrec.state.ranking import Slate

    feed = Feed()
    _community(feed)
    rec, ctxs, slates = _slate_cases(feed)
    t, mf = rec.table, rec.mf
    n_refs = [2, None, 1, 3]  # rank features against the first rows only (candidates, not explored items)
    candidates = [Slate(ctx, t.codes(items), None, t.mf_rows(t.codes(items), mf.row_of), mf.user_vector(ctx.user_id),
                        mf._mean_bias(), n_reference=r) for ctx, items, r in zip(ctxs, slates, n_refs)]
    alone = [rec._features_many([slate])[0] for slate in candidates]
    together = rec._features_many(candidates)
    for a, b in zip(alone, together):
        assert np.allclose(a, b, atol=1e-6), (a - b)


def test_a_positive_without_impression_is_not_learned_against_candidates_the_user_engaged_with_since():
    feed, _ = _twins(explore_share=0.0, click_negatives=64)
    rec = feed.p.recommender
    rec.publish_many([("u0", feed.p.features.user("u0"))], 10)
    sample = rec.table.ids[rec.published["u0"][1]].tolist()  # kept as codes, looked up when used
    assert len(sample) >= 3
    first, second = sample[0], sample[1]
    feed.send("click", user_id="u0", item_id=first)  # a positive of the same session, before the next list
    learned = []
    featurise = rec.feature_matrix
    rec.feature_matrix = lambda ctx, items, *a, **kw: learned.append(list(items)) or featurise(ctx, items, *a, **kw)
    feed.send("click", user_id="u0", item_id=second)
    assert learned and learned[0][0] == second  # the positive, then its negatives
    assert set(learned[0][1:]) == set(sample) - {first, second}  # the item engaged with since is no negative


def test_an_impression_or_click_makes_its_items_features_be_computed_afresh():
    from freshrec.state.clickmodel import FEATURES

    feed = Feed()
    for i in range(3):
        feed.send("item_upsert", item_id=f"i{i}", category="c")
    rec = feed.p.recommender
    ctx = rec.context("u", None)
    ctr = FEATURES.index("ctr")
    before = rec.feature_matrix(ctx, ["i0", "i1", "i2"])[:, ctr]
    assert rec.table.valid[rec.table.codes(["i0", "i1", "i2"])].all()  # cached until an event on the item
    feed.send("impression", user_id="u", request_id="r1", item_ids=["i0", "i1"])
    assert rec.table.valid[rec.table.codes(["i0", "i1", "i2"])].tolist() == [False, False, True]
    feed.send("click", user_id="u", item_id="i2")
    assert not rec.table.valid[rec.table.codes(["i2"])].any()
    after = rec.feature_matrix(ctx, ["i0", "i1", "i2"])[:, ctr]
    assert after[0] < before[0] and after[1] < before[1]  # shown without a click: CTR down
    assert after[2] > before[2]  # clicked (an impressionless click counts as one)


def test_queued_invalidations_apply_before_any_read_and_stay_bounded(monkeypatch):
    import freshrec.state.ranking as ranking

    table = ranking.ItemTable(4, lambda item: (None, None, False, None))
    codes = table.codes(["a", "b", "c"])
    table.valid[codes] = True
    table.invalidate_many(["a", "unknown"])  # an item the table has not met is ignored
    table.invalidate("c")
    assert table.valid[codes].tolist() == [False, True, False]
    assert table.codes(["unknown"])[0] == 3 and not table.valid[3]  # met later: invalid as any new code
    table.valid[codes] = True
    monkeypatch.setattr(ranking, "MAX_QUEUED_INVALIDATIONS", 5)
    table.invalidate_many(["a"] * 3)
    assert len(table._invalidated) == 3
    table.invalidate_many(["b"] * 3)  # past the bound: applied without waiting for a read
    assert table._invalidated == [] and table._valid[codes].tolist() == [False, False, True]


def test_list_contexts_score_co_visitation_on_arrays_exactly_as_the_dict_merge_does():
    from freshrec.state.covisitation import strongest
    from freshrec.state.ranking import NEIGHBOURS_N
    from freshrec.state.recommender import covis_scores

    feed = Feed()
    rng = np.random.default_rng(3)
    for n in range(1500):  # users with long histories over a small catalogue: many shared neighbours, ties
        feed.send("click", user_id=f"u{rng.integers(40)}", item_id=f"i{rng.integers(60)}")
    ts = feed.now
    for user, item in (("ta", "z"), ("ta", "p"), ("tb", "z"), ("tb", "q"), ("tc", "z")):  # z: p and q tie
        feed.send("click", ts=ts, user_id=user, item_id=item)
    rec = feed.p.recommender
    rec.table.codes(["q", "p"] + [f"i{j}" for j in reversed(range(60))])  # codes in another order than met
    tie = rec.context("tc", feed.p.features.user("tc")).covis_scores
    assert rec.table.ids[tie.top].tolist() == ["p", "q"]  # equal scores: first met first, as the dict has it
    checked = 0
    for u in range(40):
        row = feed.p.features.user(f"u{u}")
        ctx = rec.context(f"u{u}", row)
        expected = covis_scores(rec.covis, ctx.recent, NEIGHBOURS_N)
        got = ctx.covis_scores
        assert (got is None) == (not expected)
        if got is None:
            continue
        ids = rec.table.ids[got.codes].tolist()
        assert dict(zip(ids, got.values.tolist())) == expected  # the same floats, not just close
        assert rec.table.ids[got.top].tolist() == [i for i, _ in strongest(expected, 2 * NEIGHBOURS_N)]
        probe = rec.table.codes(list(expected)[:5] + ["i59", "never-seen"])
        assert got.lookup(probe).tolist() == [expected.get(i, 0.0) for i in rec.table.ids[probe].tolist()]
        checked += 1
    assert checked > 30
    users = [(f"u{u}", feed.p.features.user(f"u{u}")) for u in range(40)] + [("nobody", None), ("tc", None)]
    for (user_id, row), ctx in zip(users, rec.contexts(users)):  # a chunk's in one pass: each user's own
        one = rec.context(user_id, row).covis_scores
        got = ctx.covis_scores
        assert (got is None) == (one is None)
        if one is not None:
            assert (got.codes.tolist(), got.values.tolist(), got.top.tolist()) == \
                (one.codes.tolist(), one.values.tolist(), one.top.tolist())
    feed.send("click", user_id="u0", item_id="i1")  # rows change; once the cache expires, new arrays
    feed.p.features.covis.expire_cache()
    ctx = rec.context("u0", feed.p.features.user("u0"))
    assert dict(zip(rec.table.ids[ctx.covis_scores.codes].tolist(), ctx.covis_scores.values.tolist())) == \
        covis_scores(rec.covis, ctx.recent, NEIGHBOURS_N)


def test_a_user_without_engagements_gets_no_candidates_from_his_mf_vector_until_his_first():
    feed = Feed(trending_k=5, fresh_candidates=0, content_candidates=0)
    _community(feed)
    feed.send("impression", user_id="lurker", request_id="r1", item_ids=["i0", "i1", "i2"])
    feed.send("dismiss", user_id="lurker", item_id="i3")
    feed.refresh()
    rec, features = feed.p.recommender, feed.p.features
    shared = set(rec.table.ids[rec._shared_candidates()].tolist())
    lurker = rec.candidates(rec.context("lurker", features.user("lurker")))
    assert lurker and set(lurker) <= shared  # trending only: his vector is a random start moved by negatives
    feed.send("click", user_id="lurker", item_id="i4")
    feed.refresh()
    engaged = rec.candidates(rec.context("lurker", features.user("lurker")))
    assert set(engaged) - shared - {"i4"}, engaged  # ANN from his vector (and near his item) again


@pytest.mark.parametrize("seed", range(4))
def test_rank_features_are_each_rows_share_of_its_groups_references_below_it(seed):
    """_rank_within (one sort of packed keys) and its search-based fallback equal the per-group
    definition, with ties, signed zeros, empty groups and groups without reference rows."""
    from freshrec.state.ranking import _rank_within, _rank_within_by_search

    rng = np.random.default_rng(seed)
    for _ in range(60):
        lengths = rng.integers(0, 300, rng.integers(1, 70))
        n = int(lengths.sum())
        owner = np.repeat(np.arange(len(lengths)), lengths)
        values = np.round(rng.normal(size=n), int(rng.integers(0, 3)))  # many ties
        values[rng.random(n) < 0.2] = -0.0
        n_ref = np.array([rng.integers(0, m + 1) for m in lengths], dtype=np.intp)
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.intp)
        is_ref = (np.arange(n) - starts[owner]) < n_ref[owner]
        expected = np.zeros(n)
        for g, (s, m) in enumerate(zip(starts, lengths)):
            ref = np.sort(values[s:s + n_ref[g]])
            expected[s:s + m] = np.searchsorted(ref, values[s:s + m], side="left") / max(len(ref), 1)
        assert np.array_equal(_rank_within(values, owner, n_ref, is_ref), expected)
        assert np.array_equal(_rank_within_by_search(values, owner, n_ref, is_ref), expected)


def test_the_category_cap_takes_candidates_in_order_and_fills_past_it_only_when_it_must():
    from freshrec.state.ranking import _capped

    rng = np.random.default_rng(0)
    for _ in range(300):
        n, k = int(rng.integers(1, 200)), int(rng.integers(1, 30))
        cats = rng.integers(0, int(rng.integers(1, 6)), n)
        order = rng.permutation(n)
        cap = int(rng.integers(1, k + 1))
        taken, over = [], []
        for j in order.tolist():  # the definition: in order, skip what passes the cap
            c = int(cats[j])
            (over if c and sum(int(cats[i]) == c for i in taken) >= cap else taken).append(j)
        expected = (taken + over)[:k] if len(taken) < k else taken[:k]
        assert _capped(order, cats, k, cap) == expected


@pytest.mark.parametrize("seed", range(4))
def test_each_groups_top_k_rows_are_the_first_k_of_its_stable_argsort(seed):
    """_top_k_rows (one padded partition for the batch) equals the first k of each group's
    ``np.argsort(-values, kind="stable")``, with ties (at the k-th value too) and groups of
    fewer than k rows."""
    from freshrec.state.ranking import _top_k_rows

    rng = np.random.default_rng(seed)
    for _ in range(100):
        lengths = rng.integers(1, 300, rng.integers(1, 70))
        k = int(rng.integers(1, 40))
        owner = np.repeat(np.arange(len(lengths)), lengths)
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        local = np.arange(len(owner)) - starts[owner]
        values = np.round(rng.normal(size=len(owner)), int(rng.integers(0, 3)))  # many ties
        top, top_starts = _top_k_rows(values, owner, local, len(lengths), k)
        for g, (s, m) in enumerate(zip(starts, lengths)):
            expected = np.argsort(-values[s:s + m], kind="stable")[:k]
            assert top[top_starts[g]:top_starts[g] + min(m, k)].tolist() == expected.tolist()
        assert len(top) == int(np.minimum(lengths, k).sum())


def test_a_checkpoint_from_before_the_exploration_stream_and_unsorted_references_loads():
    """Older checkpoints have no ``explore_rng`` and remembered sorted references with
    frozensets of candidates: they load, and a positive among those candidates is learned."""
    feed, _ = _twins()
    rec = feed.p.recommender
    users = [f"u{u}" for u in range(30)]
    rec.publish_many([(u, feed.p.features.user(u)) for u in users], 10)
    state = rec.to_state()
    del state["explore_rng"]
    state["published"] = {u: (frozenset(c), s, (np.sort(r[0]), np.sort(r[1])))
                          for u, (c, s, r) in state["published"].items()}
    rec.load_state(state, rec.index)
    assert rec.publish_many([(u, feed.p.features.user(u)) for u in users[:3]], 10)[0]
    learned = rec.clicks.n_learned
    user = users[5]
    candidates = rec.table.ids[rec.published[user][0]].tolist()  # still the old checkpoint's entry, as codes
    assert set(candidates) == set(state["published"][user][0])
    item = sorted(candidates)[0]  # candidates exclude the items seen when the list was made
    feed.send("click", user_id=user, item_id=item)
    assert rec.clicks.n_learned > learned


def test_member_is_isin():
    from freshrec.state.ranking import _member

    rng = np.random.default_rng(5)
    for n_values in (1, 3, 50):
        values = rng.integers(-5, 100, n_values)
        query = rng.integers(-10, 110, (7, 9))
        assert np.array_equal(_member(query, values), np.isin(query, values))


def test_neighbour_rows_are_the_cached_co_visitation_lists_and_follow_their_changes():
    from freshrec.state.covisitation import CoVisitation
    from freshrec.state.ranking import NEIGHBOURS_N

    feed = Feed()
    rng = np.random.default_rng(5)
    for n in range(3000):  # long rows for the popular items, short ones in the tail
        feed.send("click", user_id=f"u{rng.integers(50)}", item_id=f"i{min(rng.geometric(0.03), 150)}")
    feed.send("click", user_id="u1", item_id="rare")  # one click: a short row (u1's last 20 items)
    rec = feed.p.recommender
    rows = rec._neighbours

    def check(items):
        codes = rec.table.codes(items)
        got, weights, lengths = rows.gather(rec.covis, codes)
        expected = [rec.covis.top_list(i, NEIGHBOURS_N)[:NEIGHBOURS_N] for i in items]
        assert lengths.tolist() == [len(e) for e in expected]
        assert list(zip(rec.table.ids[got].tolist(), weights.tolist())) == [p for e in expected for p in e]
        return lengths

    items = [f"i{j}" for j in (1, 2, 150, 40, 1, 99)] + ["rare", "never-clicked"]
    lengths = check(items)
    assert lengths[0] == NEIGHBOURS_N and 0 < lengths[-2] < NEIGHBOURS_N and lengths[-1] == 0
    for n in range(300):  # rows change: full lists stay as cached until the cache expires them,
        feed.send("click", user_id=f"u{rng.integers(50)}", item_id=f"i{rng.integers(30, 150)}")
    feed.send("click", user_id="u2", item_id="rare")
    assert check(items)[-2] > lengths[-2]  # short ones are replaced at once, as top_list does
    feed.p.features.covis.expire_cache()
    check(items)
    feed.p.features.covis = CoVisitation(feed.p.features.covis.half_life_ms, 200)  # another object: all made again
    check(items)
