from freshrec.settings import Settings
from freshrec.state.catalogue import Catalogue
from freshrec.state.features import Dirty, FeatureStore
from freshrec.state.recommender import CoVisitationRecommender
from freshrec.state.trending import Trending


def _setup():
    store = FeatureStore(Settings())
    cat = Catalogue()
    d = Dirty()
    off = 0

    def click(u, item, ts):
        nonlocal off
        store.apply({"type": "click", "user_id": u, "item_id": item, "ts": ts, "event_id": f"e{off}"}, 0, off, d)
        off += 1

    # Many users watch a -> b; "pop" is globally popular.
    for i in range(20):
        click(f"x{i}", "a", 1000 + i)
        click(f"x{i}", "b", 1001 + i)
    for i in range(40):
        click(f"y{i}", "pop", 1000 + i)
    trending = Trending(store.item_stats, cat, k=10)
    trending.refresh(store.stream_time_ms)
    return store, cat, trending, click


def test_recent_item_neighbours_rank_first_seen_and_deleted_excluded():
    store, cat, trending, click = _setup()
    rec = CoVisitationRecommender(store.covis, cat, trending)
    click("new", "a", 5000)
    items = [i for i, _ in rec.recommend_one("new", store.user("new"), 5)]
    assert items[0] == "b" and "a" not in items and "pop" in items
    cat.apply({"type": "item_delete", "item_id": "b", "ts": 6000})
    items = [i for i, _ in rec.recommend_one("new", store.user("new"), 5)]
    assert "b" not in items


def test_new_user_gets_trending():
    store, cat, trending, _ = _setup()
    rec = CoVisitationRecommender(store.covis, cat, trending)
    assert rec.recommend_one("nobody", None, 1)[0][0] == "pop"
    assert trending.global_list[0][0] == "pop"


def test_covis_scores_of_some_items_are_those_of_the_full_scores():
    from freshrec.state.covisitation import CoVisitation
    from freshrec.state.recommender import covis_scores, covis_scores_of

    covis = CoVisitation(half_life_ms=1e9, max_neighbors=100)
    rng = __import__("random").Random(4)
    items = [f"i{n}" for n in range(40)]
    for t in range(600):
        a, b = rng.sample(items, 2)
        covis.add(a, [(b, rng.random())], ts=t)
    recent = ["i1", "i7", "i3", "i30"]
    full = covis_scores(covis, recent, 10)
    asked = ["i2", "i9", "i1", "nope", "i9", "i33"]
    part = covis_scores_of(covis, recent, 10, asked)
    assert part == {i: full[i] for i in asked if i in full}
    assert part  # some of them are neighbours
    covis.add("i1", [("i2", 50.0)], ts=601)
    covis.expire_cache()  # a changed row: both see the new weights
    assert covis_scores_of(covis, recent, 10, ["i2"]) == {"i2": covis_scores(covis, recent, 10)["i2"]}
