"""Synthetic stream: deterministic, valid, time-ordered, and with the planted preference signal."""

from __future__ import annotations

import itertools
import time
from collections import Counter

import pytest

from freshrec.streams.datasets.synthetic import DEFAULT_START_MS, SyntheticDataset, make_world, synthetic_events
from freshrec.streams.schema import validate_event

SMALL = dict(n_users=50, n_items=200, n_categories=5, n_events=5000)


def test_deterministic_for_a_seed():
    assert list(synthetic_events(**SMALL, seed=3)) == list(synthetic_events(**SMALL, seed=3))
    a = [e["item_ids"] for e in synthetic_events(**SMALL, seed=3) if e["type"] == "impression"]
    b = [e["item_ids"] for e in synthetic_events(**SMALL, seed=4) if e["type"] == "impression"]
    assert a != b


def test_counts_order_ids_and_validity():
    events = list(synthetic_events(**SMALL, seed=1))
    assert len(events) == 200 + 5000
    assert [e["type"] for e in events[:200]] == ["item_upsert"] * 200
    assert all(e["type"] != "item_upsert" for e in events[200:])
    ts = [e["ts"] for e in events]
    assert ts == sorted(ts) and ts[0] == DEFAULT_START_MS
    assert len({e["event_id"] for e in events}) == len(events)
    types = Counter(e["type"] for e in events[200:])
    assert set(types) == {"impression", "click", "conversion", "rating", "dismiss"}
    assert types["impression"] > types["conversion"] > 0
    for e in events:
        validate_event(e, now_ms=10**14, max_future_ms=0)
    slate_sizes = {len(e["item_ids"]) for e in events if e["type"] == "impression"}
    assert slate_sizes == {10}
    assert all(len(set(e["item_ids"])) == 10 for e in events if e["type"] == "impression")


def test_clicks_refer_to_their_slate():
    slates = {}
    for e in synthetic_events(**SMALL):
        if e["type"] == "impression":
            slates[e["request_id"]] = e
        elif e["type"] in ("click", "dismiss"):
            imp = slates[e["request_id"]]
            assert imp["item_ids"][e["position"]] == e["item_id"] and imp["user_id"] == e["user_id"]
            assert e["ts"] > imp["ts"]


def test_catalogue_matches_world():
    world = make_world(**{k: v for k, v in SMALL.items() if k != "n_events"}, seed=2)
    for e in itertools.islice(synthetic_events(**SMALL, seed=2), 200):
        assert e["category"] == world.category_of(e["item_id"]) and e["tags"] == [e["category"]]
    assert all(1 <= len(p) <= 2 for p in world.user_prefs)
    assert Counter(world.item_category).most_common()[-1][1] >= 200 // 5  # balanced categories


def test_planted_structure_preferred_ctr_is_much_higher():
    world = make_world(n_users=500, n_items=1000, n_categories=10, seed=0)
    shown, clicked = Counter(), Counter()
    for e in synthetic_events(n_events=30_000, seed=0):
        if e["type"] == "impression":
            for item in e["item_ids"]:
                shown[world.prefers(e["user_id"], item)] += 1
        elif e["type"] == "click":
            clicked[world.prefers(e["user_id"], e["item_id"])] += 1
    ctr_pref = clicked[True] / shown[True]
    ctr_other = clicked[False] / shown[False]
    assert ctr_pref > 5 * ctr_other, (ctr_pref, ctr_other)
    assert 0.1 < ctr_pref < 0.5 and ctr_other < 0.05


def test_popularity_is_skewed():
    shown = Counter(i for e in synthetic_events(**SMALL) if e["type"] == "impression" for i in e["item_ids"])
    top = sum(n for _, n in shown.most_common(20))
    assert top > 0.25 * sum(shown.values())  # 10% of the items get well over 10% of the exposure


def test_start_ms_and_realtime():
    first = next(iter(synthetic_events(**SMALL, start_ms=1234)))
    assert first["ts"] == 1234
    before = time.time_ns() // 1_000_000
    events = list(synthetic_events(**{**SMALL, "n_events": 300}, realtime=True))
    after = time.time_ns() // 1_000_000
    assert all(before <= e["ts"] <= after for e in events)
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)


def test_dataset_wrapper():
    ds = SyntheticDataset(**SMALL)
    assert len(ds) == ds.total == 5200
    assert list(ds) == list(ds)  # re-iterable
    with pytest.raises(ValueError):
        SyntheticDataset(n_users=0)


def test_zero_events():
    assert [e["type"] for e in synthetic_events(n_items=3, n_events=0)] == ["item_upsert"] * 3
