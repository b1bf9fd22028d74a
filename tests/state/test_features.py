import copy
import random
from collections import Counter

import pytest

from freshrec.settings import Settings
from freshrec.state.features import Dirty, FeatureStore, split_part_key


def _events(n=600, users=20, items=40, seed=3):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        u = f"u{rng.randrange(users)}"
        kind = rng.choice(["click", "rating", "impression", "dismiss", "conversion"])
        ts = 1_000_000 + i * 1000 + rng.randrange(-5000, 5000)  # some out of order
        if kind == "impression":
            ev = {"type": kind, "user_id": u, "request_id": f"r{i}",
                  "item_ids": [f"i{rng.randrange(items)}" for _ in range(5)]}
        else:
            ev = {"type": kind, "user_id": u, "item_id": f"i{rng.randrange(items)}"}
            if kind == "rating":
                ev["value"] = 4.0
        ev.update(event_id=f"e{i}", ts=ts, v=1)
        out.append(ev)
    return out


def _direct_counts(events):
    counts: Counter = Counter()
    seen = set()
    for ev in events:
        if ev["event_id"] in seen:
            continue
        seen.add(ev["event_id"])
        if ev["type"] == "impression":
            for item in ev["item_ids"]:
                counts[(item, "impression")] += 1
        else:
            counts[(ev["item_id"], ev["type"])] += 1
    return counts


def _store_counts(store: FeatureStore):
    out: Counter = Counter()
    for item, row in store.item_stats.rows.items():
        for etype, n in row["c"].items():
            out[(item, etype)] += n
    return +out


def _partitioned(events, partitions=3):
    """(partition, offset, event) in per-partition offset order, keyed by user like Kafka."""
    offsets = Counter()
    out = []
    for ev in events:
        p = int(ev["user_id"][1:]) % partitions
        out.append((p, offsets[p], ev))
        offsets[p] += 1
    return out


def test_counts_equal_a_direct_count_and_duplicates_count_once():
    events = _events()
    dupes = [dict(e) for e in events[::7]]  # producer retries: same event_id, later offsets
    stream = _partitioned(events + dupes)
    store = FeatureStore(Settings())
    dirty = Dirty()
    outcomes = [store.apply(ev, p, o, dirty) for p, o, ev in stream]
    assert sum(not applied for applied in outcomes) == len(dupes)
    assert _store_counts(store) == _direct_counts(events)


def test_crash_with_partially_persisted_rows_then_replay_counts_exactly_once():
    events = _events(n=900)
    stream = _partitioned(events)
    rng = random.Random(7)
    # Run the whole stream once, snapshotting each table at a different batch boundary: what
    # the changelogs may hold when the worker is killed (each topic persisted up to a point).
    store = FeatureStore(Settings())
    batches = [stream[i:i + 50] for i in range(0, len(stream), 50)]
    cut = {name: rng.randrange(3, len(batches) - 3) for name in ("users", "items", "covis")}
    snaps = {}
    for b, batch in enumerate(batches):
        for p, o, ev in batch:
            store.apply(ev, p, o, Dirty())
        for name, at in cut.items():
            if at == b:
                snaps[name] = copy.deepcopy(getattr(store, {"users": "users", "items": "item_parts",
                                                             "covis": "covis_parts"}[name]))
    # The committed offset is at or before the oldest persisted batch end.
    committed_batch = min(cut.values()) - 2
    replay_from = [x for batch in batches[committed_batch + 1:] for x in batch]
    recovered = FeatureStore(Settings(), copy.deepcopy(snaps["users"]), copy.deepcopy(snaps["items"]),
                             copy.deepcopy(snaps["covis"]))
    for p, o, ev in replay_from:
        recovered.apply(ev, p, o, Dirty())
    assert _store_counts(recovered) == _direct_counts(events)
    # Co-visitation is rebuilt to the same rows as an uninterrupted run.
    assert recovered.covis_parts.keys() == store.covis_parts.keys()
    for key, row in store.covis_parts.items():
        assert recovered.covis_parts[key]["wm"] == row["wm"]
        for nb, w in row["n"].items():
            assert abs(recovered.covis_parts[key]["n"].get(nb, 0.0) - w) < 1e-6 * max(1.0, w)


def test_rebuild_from_partial_rows_equals_live_merged_view():
    stream = _partitioned(_events())
    store = FeatureStore(Settings())
    for p, o, ev in stream:
        store.apply(ev, p, o, Dirty())
    rebuilt = FeatureStore(Settings(), store.users, store.item_parts, store.covis_parts)
    assert _store_counts(rebuilt) == _store_counts(store)
    now = store.stream_time_ms
    for item in store.item_stats.rows:
        assert abs(rebuilt.item_stats.popularity(item, now) - store.item_stats.popularity(item, now)) < 1e-9
    assert {split_part_key(k)[0] for k in store.item_parts} == {0, 1, 2}


def test_history_is_in_event_time_order_and_seen_and_dedupe_are_bounded():
    s = Settings(history_len=3, seen_max=4, dedupe_window=5)
    store = FeatureStore(s)
    d = Dirty()
    for off, (item, ts) in enumerate([("a", 10), ("b", 30), ("c", 20), ("d", 40), ("e", 50), ("f", 60)]):
        store.apply({"type": "click", "user_id": "u", "item_id": item, "ts": ts, "event_id": f"x{off}"}, 0, off, d)
    row = store.user("u")
    assert [h[0] for h in row["h"]] == ["d", "e", "f"]
    assert list(row["seen"]) == ["c", "d", "e", "f"]
    assert len(row["ids"]) == 5
    assert d.users == {"u": 0}


def test_user_delete_forgets_personal_state_but_not_aggregates():
    store = FeatureStore(Settings())
    d = Dirty()
    store.apply({"type": "click", "user_id": "u", "item_id": "a", "ts": 1, "event_id": "1"}, 0, 0, d)
    store.apply({"type": "user_delete", "user_id": "u", "ts": 2, "event_id": "2"}, 0, 1, d)
    assert store.user("u") is None
    assert store.users["u"] == {"deleted": True, "wm": 1}
    assert store.item_stats.count("a", "click") == 1
    # Events after the deletion start a fresh profile.
    store.apply({"type": "click", "user_id": "u", "item_id": "b", "ts": 3, "event_id": "3"}, 0, 2, d)
    assert [h[0] for h in store.user("u")["h"]] == ["b"]


def test_covisitation_rows_equal_pairs_added_one_event_at_a_time():
    """Items repeat within users' windows here (40 items): each row gets all its weights of an event."""
    from freshrec.state import covisitation as cv
    from freshrec.state import users as us

    settings = Settings()
    store = FeatureStore(settings)
    dirty = Dirty()
    expected: dict[str, dict] = {}
    repeated = 0
    for p, o, ev in _partitioned(_events()):
        urow = store.users.get(ev["user_id"])
        previous = us.history_before(urow, o) if urow else []
        if store.apply(ev, p, o, dirty) and ev["type"] in ("click", "conversion", "rating"):
            pairs = cv.pairs_for(ev["item_id"], previous, settings.covis_window)
            repeated += len(pairs) != len({n for n, _ in pairs})
            by_row: dict[str, list] = {}
            for neighbour, w in pairs:
                by_row.setdefault(ev["item_id"], []).append((neighbour, w))
                by_row.setdefault(neighbour, []).append((ev["item_id"], w))
            for item, row_pairs in by_row.items():
                cv.add_pairs(expected.setdefault(item, cv.new_covis_row()), row_pairs, ev["ts"],
                             store.covis_half_life_ms, settings.covis_max_neighbors)
    assert repeated > 0
    assert {k: r["n"] for k, r in store.covis.rows.items() if r["n"]} == {k: r["n"] for k, r in expected.items()}


def _with_history(events, items=40, seed=5):
    """The events plus bursts of clicks by one user, so that histories fill the covis window
    and an item comes twice in it (both co-visitation paths)."""
    rng = random.Random(seed)
    out = list(events)
    for j in range(120):
        out.append({"type": "click", "user_id": "u0", "item_id": f"i{rng.randrange(items // 4)}",
                    "event_id": f"h{j}", "ts": 2_000_000 + j * 500, "v": 1})
    return out


def test_a_store_without_partials_has_the_merged_views_of_one_with_them_bit_for_bit():
    events = _with_history(_events(n=900))
    stream = _partitioned(events + [dict(e) for e in events[::11]])  # and resent duplicates
    with_parts, merged = FeatureStore(Settings()), FeatureStore(Settings(), partials=False)
    out_parts = [with_parts.apply(ev, p, o, Dirty()) for p, o, ev in stream]
    out_merged = [merged.apply(ev, p, o, Dirty()) for p, o, ev in stream]
    assert out_parts == out_merged
    assert merged.item_stats.rows == with_parts.item_stats.rows
    assert merged.covis.rows == with_parts.covis.rows
    assert merged.users == with_parts.users
    assert not merged.item_parts and not merged.covis_parts  # nothing written twice
    assert max(len(r["n"]) for r in merged.covis.rows.values()) > 10  # long histories were met


def test_without_partials_a_replayed_event_the_user_row_holds_changes_nothing():
    store = FeatureStore(Settings(), partials=False)
    stream = _partitioned(_with_history(_events(n=300)))
    for p, o, ev in stream:
        store.apply(ev, p, o, Dirty())
    before = copy.deepcopy((store.item_stats.rows, store.covis.rows, store.users))
    for p, o, ev in stream[-50:]:  # the tail again, at its own offsets (a re-read after a seek)
        assert store.apply(ev, p, o, Dirty())
    assert (store.item_stats.rows, store.covis.rows, store.users) == before


def test_rows_load_into_a_store_of_either_kind():
    stream = _partitioned(_with_history(_events(n=400)))
    with_parts, merged = FeatureStore(Settings()), FeatureStore(Settings(), partials=False)
    for p, o, ev in stream:
        with_parts.apply(ev, p, o, Dirty())
        merged.apply(ev, p, o, Dirty())
    same = FeatureStore(Settings(), partials=False)  # a checkpoint of the stream engine
    same.load_rows(copy.deepcopy(merged.item_rows()), copy.deepcopy(merged.covis_rows()), partials=False)
    assert same.item_stats.rows == merged.item_stats.rows and same.covis.rows == merged.covis.rows
    older = FeatureStore(Settings(), partials=False)  # a checkpoint written with partials: merged
    older.load_rows(with_parts.item_rows(), with_parts.covis_rows(), partials=True)
    assert _store_counts(older) == _store_counts(merged)
    for item, row in merged.covis.rows.items():
        for nb, w in row["n"].items():
            mine = older.covis.rows[item]
            assert abs(mine["n"][nb] * 2 ** ((mine["t0"] - row["t0"]) / older.covis_half_life_ms) - w) < 1e-9 * max(1, w)
    with pytest.raises(ValueError, match="no per-partition partials"):
        FeatureStore(Settings()).load_rows(merged.item_rows(), merged.covis_rows(), partials=False)
