import pytest

from freshrec.state.popularity import ItemStats, ctr

H = 1000.0


def test_counts_popularity_and_ctr_with_prior():
    stats = ItemStats(half_life_ms=H)
    stats.add("a", {"impression": 10}, 0)
    stats.add("a", {"click": 2}, 0)
    stats.add("b", {"click": 1, "conversion": 1}, 0)
    assert stats.count("a", "impression") == 10 and stats.count("a", "click") == 2
    assert ctr(stats.get("a"), 1.0, 20.0) == pytest.approx(3 / 31)
    assert ctr(None, 1.0, 20.0) == pytest.approx(1 / 21)  # unknown item: the prior mean
    # b: click (1) + conversion (3) = 4 > a: 2 clicks; impressions add no popularity
    assert [i for i, _ in stats.top(2, now_ms=0)] == ["b", "a"]
    assert stats.popularity("b", H) == pytest.approx(2.0)  # one half-life later


def test_top_respects_filter_and_candidate_set():
    stats = ItemStats(half_life_ms=H)
    for i, item in enumerate("abcd"):
        stats.add(item, {"click": i + 1}, 0)
    assert [i for i, _ in stats.top(2, 0, keep=lambda x: x != "d")] == ["c", "b"]
    assert [i for i, _ in stats.top(5, 0, items={"a", "b", "zz"})] == ["b", "a"]


def test_top_of_precomputed_scores_is_top_exactly():
    import random

    from freshrec.state.popularity import top_of

    rng = random.Random(4)
    stats = ItemStats(half_life_ms=H)
    for n in range(3000):  # ties included: many items share their counts and times
        stats.add(f"i{rng.randrange(400)}", {rng.choice(["click", "conversion", "impression"]): 1}, rng.randrange(5) * 100)
    now = 700
    scores = stats.popularity_now(now)
    assert len(scores) == sum(1 for row in stats.rows.values() if row.get("pop"))
    subset = {f"i{j}" for j in range(0, 450, 3)}  # some never seen
    keep = lambda item: not item.endswith("7")  # noqa: E731

    def reference(candidates):  # the definition: best (score, item) first, from each item's own popularity
        scored = [(stats.popularity(i, now), i) for i in candidates if stats.popularity(i, now) > 0]
        return [(i, v) for v, i in sorted(scored, reverse=True)]

    for k in (1, 10, 50, 1000):
        assert top_of(scores, k) == stats.top(k, now) == reference(stats.rows)[:k]
        assert top_of(scores, k, keep=keep) == stats.top(k, now, keep=keep) == reference(filter(keep, stats.rows))[:k]
        assert top_of(scores, k, items=subset) == stats.top(k, now, items=subset) == reference(subset)[:k]
