import heapq
import random

import pytest

from freshrec.state.covisitation import SORT_BELOW, CoVisitation, add_pair, add_pairs, new_covis_row, pairs_for, strongest


def test_pairs_weight_recent_neighbours_more_and_skip_self():
    assert pairs_for("x", ["a", "b", "x", "c"], window=3) == [("c", 1.0), ("b", 1 / 3)]


def test_neighbours_are_normalised_and_cache_invalidates_on_update():
    cv = CoVisitation(half_life_ms=1e12, max_neighbors=10)
    cv.add("a", [("b", 3.0), ("c", 1.0)], 0)
    assert cv.neighbours("a") == [("b", 0.75), ("c", 0.25)]
    cv.add("a", [("c", 4.0)], 0)
    assert [k for k, _ in cv.neighbours("a")] == ["b", "c"]  # cached list: at most one interval old
    cv.expire_cache()
    assert [k for k, _ in cv.neighbours("a")] == ["c", "b"]


def test_a_changed_items_list_is_made_again_once_it_is_min_age_old():
    cv = CoVisitation(half_life_ms=1e12, max_neighbors=10)
    cv.expire_cache(now_ms=1_000, min_age_ms=5_000)  # the clock of the lists made next
    cv.add("a", [("b", 3.0), ("c", 1.0)], 0)
    cv.add("z", [("b", 1.0)], 0)
    first = cv.top_list("a")
    cv.top_list("z")
    cv.add("a", [("c", 4.0)], 0)
    cv.add("z", [("c", 4.0)], 0)
    cv.expire_cache(now_ms=5_999, min_age_ms=5_000)  # made 4,999 ms ago: kept, still marked
    assert cv.top_list("a") is first
    cv.expire_cache(now_ms=6_000, min_age_ms=5_000)
    assert [k for k, _ in cv.neighbours("a")] == ["c", "b"] and cv.top_list("a") is not first
    assert [k for k, _ in cv.neighbours("z")] == ["c", "b"]
    again = cv.top_list("a")  # made at 6,000: not changed since, so kept whatever its age
    cv.expire_cache(now_ms=60_000, min_age_ms=5_000)
    assert cv.top_list("a") is again


def test_rows_are_pruned_to_the_strongest_neighbours():
    cv = CoVisitation(half_life_ms=1e12, max_neighbors=4)
    for i in range(10):
        cv.add("a", [(f"n{i}", float(i + 1))], 0)
    assert len(cv.rows["a"]["n"]) <= 6
    assert cv.neighbours("a", 1)[0][0] == "n9"


@pytest.mark.parametrize("size", [0, 3, 60, SORT_BELOW + 10])
def test_strongest_is_nlargest_ties_included(size):
    rng = random.Random(size)
    weights = {f"i{j}": float(rng.randint(0, 20)) for j in range(size)}  # many ties
    for n in (1, 50, size + 5):
        expected = heapq.nlargest(n, weights.items(), key=lambda kv: kv[1])
        assert strongest(weights, n) == expected


def test_add_pair_is_add_pairs_of_one_pair_bit_for_bit():
    # random single-pair updates through the rebase (far-apart times) and the pruning (a small cap)
    rng = random.Random(7)
    one, many = new_covis_row(), new_covis_row()
    ts = 0
    for step in range(3000):
        ts += rng.choice([0, 1, 1000, 10**6, 10**9])
        neighbour, weight = f"n{rng.randint(0, 40)}", rng.random()
        add_pair(one, neighbour, weight, ts, 1000.0, 20)
        add_pairs(many, [(neighbour, weight)], ts, 1000.0, 20)
        assert one == many, step
    assert len(one["n"]) <= 30 and one["t0"] > 0  # both paths were exercised


def test_covisitation_add_one_is_add_of_one_pair():
    a, b = CoVisitation(3.6e6, 10), CoVisitation(3.6e6, 10)
    for t, (item, nb, w) in enumerate([("x", "y", 1.0), ("y", "x", 0.5), ("x", "z", 0.25), ("x", "y", 2.0)]):
        a.add_one(item, nb, w, t * 1000)
        b.add(item, [(nb, w)], t * 1000)
    assert a.rows == b.rows
    assert a.neighbours("x") == b.neighbours("x")


def test_the_drop_log_names_each_dropped_or_replaced_list_and_restarts_readers_it_lost(monkeypatch):
    import freshrec.state.covisitation as covisitation

    cv = CoVisitation(half_life_ms=1e12, max_neighbors=10)
    assert cv.drops_since(0) == ([], 0)
    cv.add("a", [("b", 3.0), ("c", 1.0)], 0)
    cv.add("z", [("b", 1.0)], 0)
    cv.top_list("a")  # first made: no list replaced, nothing logged
    cv.top_list("z")
    assert cv.drops_since(0) == ([], 0)
    cv.add("a", [("d", 1.0)], 0)  # a's row outgrew its short list: the next read replaces it
    cv.top_list("a")
    assert cv.drops_since(0) == (["a"], 1)
    cv.expire_cache()  # a and z changed since they were cached: both dropped
    items, end = cv.drops_since(1)
    assert sorted(items) == ["a", "z"] and end == 3
    assert cv.drops_since(end) == ([], end)
    cv.expire_cache()  # nothing cached any more: nothing to log
    assert cv.drops_since(end) == ([], end)
    cv.top_list("a")
    cv.reset_cache()  # every list gone: readers at any earlier position start over
    assert cv.drops_since(end)[0] is None
    _, end = cv.drops_since(0)
    assert cv.drops_since(end) == ([], end)
    monkeypatch.setattr(covisitation, "DROP_LOG_MAX", 4)
    for n in range(6):  # the log keeps its newest entries; a reader left behind the rest starts over
        cv.top_list("a")
        cv._drop("a")
    items, now = cv.drops_since(end)
    assert items is None and now == end + 6
    assert cv.drops_since(now - 2) == (["a", "a"], now)
