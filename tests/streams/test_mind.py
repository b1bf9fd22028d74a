"""MIND loader: impressions and clicks on tiny files, history replay, and the real sample."""

from __future__ import annotations

import calendar
from collections import Counter
from pathlib import Path

import pytest

from freshrec.streams.datasets.mind import Mind, load_mind, parse_mind_time
from freshrec.streams.schema import validate_event


def ms(y, mo, d, h, mi, s):
    return calendar.timegm((y, mo, d, h, mi, s)) * 1000


BEHAVIORS = (
    # later row first in the file: the loader sorts by time
    "2\tU2\t11/15/2019 1:00:00 PM\tN1 N2\tN5-0 N6-1 N7-1\n"
    "1\tU1\t11/15/2019 12:30:05 AM\t\tN5-1 N6-0\n"
    "3\tU1\t11/15/2019 1:00:00 PM\tN9\tN7-0 N8-0\n"  # same second as row 2: file order kept
)
NEWS = ("N5\tsports\tfootball_nfl\tBig game\tA close one.\thttp://u\t[]\t[]\n"
        "N6\tnews\tnewsus\tNo abstract\t\thttp://v\t[]\t[]\n")


@pytest.fixture
def mind_dir(tmp_path: Path) -> Path:
    (tmp_path / "behaviors.tsv").write_text(BEHAVIORS)
    (tmp_path / "news.tsv").write_text(NEWS)
    return tmp_path


def test_parse_time():
    assert parse_mind_time("11/12/2019 2:14:46 PM") == ms(2019, 11, 12, 14, 14, 46)
    assert parse_mind_time("11/12/2019 12:01:00 AM") == ms(2019, 11, 12, 0, 1, 0)
    assert parse_mind_time("11/12/2019 12:01:00 PM") == ms(2019, 11, 12, 12, 1, 0)


def test_impressions_then_clicks_in_time_order(mind_dir: Path):
    events = list(load_mind(mind_dir))
    kinds = [(e["type"], e["event_id"]) for e in events]
    assert kinds == [
        ("item_upsert", "mind:news:N5"), ("item_upsert", "mind:news:N6"),
        ("impression", "mind:imp:1"), ("click", "mind:click:1:0"),
        ("impression", "mind:imp:2"), ("impression", "mind:imp:3"),
        ("click", "mind:click:2:1"), ("click", "mind:click:2:2"),
    ]
    imp1, click1 = events[2], events[3]
    t1 = ms(2019, 11, 15, 0, 30, 5)
    assert imp1 == {"v": 1, "type": "impression", "event_id": "mind:imp:1", "ts": t1, "user_id": "U1",
                    "request_id": "1", "item_ids": ["N5", "N6"]}
    assert click1 == {"v": 1, "type": "click", "event_id": "mind:click:1:0", "ts": t1 + 1, "user_id": "U1",
                      "item_id": "N5", "request_id": "1", "position": 0}
    imp2 = events[4]
    assert imp2["item_ids"] == ["N5", "N6", "N7"]
    clicks2 = [e for e in events if e["type"] == "click" and e["request_id"] == "2"]
    assert [(e["item_id"], e["position"], e["ts"]) for e in clicks2] == [
        ("N6", 1, imp2["ts"] + 1), ("N7", 2, imp2["ts"] + 1)]
    ts = [e["ts"] for e in events[2:]]
    assert ts == sorted(ts)
    for e in events:
        validate_event(e, now_ms=10**13, max_future_ms=0)


def test_news_becomes_item_upserts(mind_dir: Path):
    n5, n6 = list(load_mind(mind_dir))[:2]
    assert n5["item_id"] == "N5" and n5["category"] == "sports" and n5["tags"] == ["football_nfl"]
    assert n5["text"] == "Big game A close one."
    assert n6["text"] == "No abstract"
    assert n5["ts"] == ms(2019, 11, 15, 0, 30, 5)  # stamped at the first interaction


def test_news_is_optional_and_file_path_works(mind_dir: Path):
    (mind_dir / "news.tsv").unlink()
    events = list(load_mind(mind_dir / "behaviors.tsv"))
    assert Counter(e["type"] for e in events) == {"impression": 3, "click": 3}


def test_with_history(mind_dir: Path):
    events = list(load_mind(mind_dir, with_history=True))
    history = [e for e in events if e["event_id"].startswith("mind:hist:")]
    # U1's first impression (row 1) has an empty history: only U2's two history clicks
    assert [(e["user_id"], e["item_id"], e["event_id"]) for e in history] == [
        ("U2", "N1", "mind:hist:U2:1"), ("U2", "N2", "mind:hist:U2:0")]
    first_u2 = next(e for e in events if e["type"] == "impression" and e["user_id"] == "U2")
    assert [e["ts"] for e in history] == [first_u2["ts"] - 2, first_u2["ts"] - 1]
    assert events.index(history[-1]) < events.index(first_u2)
    assert "request_id" not in history[0] and "position" not in history[0]
    ts = [e["ts"] for e in events if e["type"] != "item_upsert"]
    assert ts == sorted(ts)


def test_unlabeled_impressions_and_bad_rows(tmp_path: Path):
    (tmp_path / "behaviors.tsv").write_text(
        "1\tU1\t11/15/2019 1:00:00 PM\t\tN1 N2\n"  # test split: no labels
        "2\tU2\t11/15/2019 1:00:00 PM\t\t\n"  # no shown items
        "garbage\n")
    ds = Mind(tmp_path)
    events = list(ds)
    assert [e["type"] for e in events] == ["impression"]
    assert events[0]["item_ids"] == ["N1", "N2"]
    assert ds.skipped_rows == 2


def test_deterministic_and_len(mind_dir: Path):
    a, b = Mind(mind_dir), Mind(mind_dir)
    assert list(a) == list(b)
    assert len(a) == len(list(a)) == 8


def test_missing_path(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        load_mind(tmp_path)


def test_real_mind_sample(shared_datasets: Path):
    ds = Mind(shared_datasets / "mind-sample")
    events = list(ds)
    types = Counter(e["type"] for e in events)
    assert types == {"impression": 5_000, "click": 7_542, "item_upsert": 2_000}
    assert len(ds) == len(events) and ds.skipped_rows == 0
    impressions = [e for e in events if e["type"] == "impression"]
    assert sum(len(e["item_ids"]) for e in impressions) == 189_359
    assert len({e["user_id"] for e in impressions}) == 4_637
    ts = [e["ts"] for e in events[2000:]]
    assert ts == sorted(ts)
    assert len({e["event_id"] for e in events}) == len(events)
    by_request = {e["request_id"]: e for e in impressions}
    for e in events:
        validate_event(e, now_ms=10**13, max_future_ms=0)
        if e["type"] == "click":
            imp = by_request[e["request_id"]]
            assert imp["item_ids"][e["position"]] == e["item_id"] and e["ts"] == imp["ts"] + 1


def test_real_mind_sample_with_history(shared_datasets: Path):
    events = list(load_mind(shared_datasets / "mind-sample", with_history=True))
    types = Counter(e["type"] for e in events)
    assert types["impression"] == 5_000 and types["item_upsert"] == 2_000
    assert types["click"] > 7_542
    ts = [e["ts"] for e in events[2000:]]
    assert ts == sorted(ts)
