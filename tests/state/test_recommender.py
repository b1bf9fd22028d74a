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
