from freshrec.state.quicklists import Served, ServedLists, engaged_since, quick_list

NEIGHBOURS = {
    "x": [("n1", 0.5), ("n2", 0.3), ("a", 0.1), ("n3", 0.1)],
    "y": [("n2", 0.4), ("n4", 0.35), ("n5", 0.25)],
}


def neighbours(item, n):
    return NEIGHBOURS.get(item, [])[:n]


def score_of(item):
    return 0.05


BASE = [("a", 0.9), ("b", 0.8), ("c", 0.7), ("d", 0.6), ("e", 0.5)]


def test_seen_and_deleted_items_leave_and_the_rest_keep_their_order_and_scores():
    out = quick_list(BASE, [], seen={"b": 1}, deleted={"d"}, neighbours=neighbours, score_of=score_of, k=10, related=3)
    assert out == [("a", 0.9), ("c", 0.7), ("e", 0.5)]


def test_neighbours_of_new_engagements_fill_every_other_slot_strongest_first():
    out = quick_list(BASE, ["x"], seen={"x": 1}, deleted=set(), neighbours=neighbours, score_of=score_of, k=5, related=2)
    # "a" is already listed; n1, n2 are the strongest new neighbours; the list stays k long
    assert out == [("a", 0.9), ("n1", 0.05), ("b", 0.8), ("n2", 0.05), ("c", 0.7)]


def test_weights_add_up_over_several_new_items_and_seen_neighbours_are_skipped():
    out = quick_list([], ["y", "x"], seen={"x": 1, "y": 1, "n1": 1}, deleted={"n5"}, neighbours=neighbours,
                     score_of=score_of, k=10, related=3)
    # n2: 0.4 + 0.3; n4 0.35; n3 0.1 (a 0.1 ties with n3 and came first, but a is not seen: it ranks)
    assert [i for i, _ in out] == ["n2", "n4", "a"]


def test_no_related_slots_is_the_ranked_list_without_what_was_seen():
    out = quick_list(BASE, ["x"], seen={"a": 1}, deleted=set(), neighbours=neighbours, score_of=score_of, k=3, related=0)
    assert out == [("b", 0.8), ("c", 0.7), ("d", 0.6)]


def test_engaged_since_reads_offsets_not_timestamps():
    row = {"h": [["p", 10, 3], ["q", 10, 7], ["r", 5, 9]]}  # r came last with an older ts
    assert engaged_since(row, 3) == ["r", "q"]
    assert engaged_since(row, 9) == [] and engaged_since(None, 0) == []


def test_served_lists_are_bounded_least_recent_first_and_forget_users():
    served = ServedLists(max_users=2)
    for u in ("u1", "u2", "u3"):
        served.put(u, Served([("a", 0.5)], 0, "champion", "m-v1", 0, 1))
    assert served.get("u1") is None and len(served) == 2
    served.forget("u2")
    assert served.get("u2") is None and served.get("u3") is not None


def test_engaged_since_keeps_the_newest_few():
    row = {"h": [[f"i{n}", n, n] for n in range(10)]}
    assert engaged_since(row, -1, n=3) == ["i9", "i8", "i7"]
