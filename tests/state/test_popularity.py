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
