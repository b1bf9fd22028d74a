import heapq
import random

import pytest

from freshrec.state.covisitation import SORT_BELOW, CoVisitation, pairs_for, strongest


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
