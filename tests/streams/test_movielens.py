"""MovieLens loader: both official formats on tiny files, and the real ML-100K copy."""

from __future__ import annotations

import calendar
from collections import Counter
from pathlib import Path

import pytest

from freshrec.streams.datasets.movielens import STANDARD_GENRES, MovieLens, load_movielens
from freshrec.streams.schema import validate_event

FLAGS = len(STANDARD_GENRES)


def flags(*genres: str) -> str:
    return "|".join("1" if g in genres else "0" for g in STANDARD_GENRES)


@pytest.fixture
def ml100k(tmp_path: Path) -> Path:
    d = tmp_path / "ml-100k"
    d.mkdir()
    # user item rating unix_ts; rows 1 and 3 tie on time, row 0 is the latest
    (d / "u.data").write_text("1\t10\t5\t900\n2\t20\t3\t100\n3\t10\t4\t500\n1\t20\t1\t100\n")
    (d / "u.item").write_bytes(
        f"10|Caf\xe9 Society (1995)|01-Jan-1995||http://x|{flags('Comedy', 'Drama')}\n"
        f"20|unknown|||http://y|{flags('unknown')}\n"
        f"30|No Genre (1930)|15-Mar-1930||http://z|{flags()}\n".encode("latin-1"))
    (d / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(STANDARD_GENRES)) + "\n")
    return d


@pytest.fixture
def ml_csv(tmp_path: Path) -> Path:
    d = tmp_path / "ml-latest-small"
    d.mkdir()
    (d / "ratings.csv").write_text("userId,movieId,rating,timestamp\n7,1,4.0,300\n8,2,3.5,200\n7,2,5.0,200\n")
    (d / "movies.csv").write_text(
        'movieId,title,genres\n1,"American President, The (1995)",Comedy|Drama|Romance\n'
        '2,Untitled,(no genres listed)\n')
    return d


def test_u_data_format(ml100k: Path):
    events = list(load_movielens(ml100k))
    assert [e["type"] for e in events] == ["item_upsert"] * 3 + ["rating"] * 4
    items = {e["item_id"]: e for e in events[:3]}
    cafe = items["10"]
    assert cafe["text"] == "Café Society (1995)"  # latin-1 decoded
    assert cafe["category"] == "Comedy" and cafe["tags"] == ["Comedy", "Drama"]
    assert cafe["created_at"] == calendar.timegm((1995, 1, 1, 0, 0, 0)) * 1000
    assert cafe["event_id"] == "ml:item:10"
    assert items["20"]["created_at"] == 0 and items["20"]["category"] == "unknown"
    assert "category" not in items["30"] and items["30"]["tags"] == []
    assert items["30"]["created_at"] < 0  # 1930: before the epoch, still a date
    ratings = events[3:]
    # event-time order, ties in file order (rows 1 and 3 at t=100)
    assert [(e["event_id"], e["ts"]) for e in ratings] == [
        ("ml:1", 100_000), ("ml:3", 100_000), ("ml:2", 500_000), ("ml:0", 900_000)]
    assert ratings[0] == {"v": 1, "type": "rating", "event_id": "ml:1", "ts": 100_000, "user_id": "2",
                          "item_id": "20", "value": 3}
    assert all(e["ts"] == 100_000 for e in events[:3])  # catalogue stamped at the first rating
    for e in events:
        validate_event(e, now_ms=10**13, max_future_ms=0)


def test_file_path_and_dir_path_agree(ml100k: Path):
    assert list(load_movielens(ml100k / "u.data")) == list(load_movielens(ml100k))


def test_ids_are_deterministic(ml100k: Path):
    assert [e["event_id"] for e in load_movielens(ml100k)] == [e["event_id"] for e in load_movielens(ml100k)]


def test_ratings_without_u_item(tmp_path: Path):
    (tmp_path / "u1.base").write_text("1\t2\t3\t4\n")
    events = list(load_movielens(tmp_path / "u1.base"))
    assert [e["type"] for e in events] == ["rating"]


def test_genres_default_to_the_standard_names(ml100k: Path):
    (ml100k / "u.genre").unlink()
    cafe = next(e for e in load_movielens(ml100k) if e.get("item_id") == "10")
    assert cafe["tags"] == ["Comedy", "Drama"]


def test_ratings_csv_format(ml_csv: Path):
    events = list(load_movielens(ml_csv))
    assert [e["type"] for e in events] == ["item_upsert"] * 2 + ["rating"] * 3
    president, untitled = events[0], events[1]
    assert president["text"] == "American President, The (1995)"  # CSV quoting honoured
    assert president["tags"] == ["Comedy", "Drama", "Romance"] and president["category"] == "Comedy"
    assert president["created_at"] == calendar.timegm((1995, 1, 1, 0, 0, 0)) * 1000  # year from title
    assert untitled["tags"] == [] and "category" not in untitled and untitled["created_at"] == 0
    ratings = events[2:]
    assert [(e["event_id"], e["user_id"], e["item_id"], e["value"], e["ts"]) for e in ratings] == [
        ("ml:1", "8", "2", 3.5, 200_000), ("ml:2", "7", "2", 5, 200_000), ("ml:0", "7", "1", 4, 300_000)]
    assert list(load_movielens(ml_csv / "ratings.csv")) == events


def test_dat_format(tmp_path: Path):
    (tmp_path / "ratings.dat").write_text("1::5::4::20\n2::5::3::10\n")
    (tmp_path / "movies.dat").write_text("5::Heat (1995)::Action|Crime|Thriller\n")
    events = list(load_movielens(tmp_path))
    assert events[0]["category"] == "Action" and events[0]["tags"] == ["Action", "Crime", "Thriller"]
    assert [e["user_id"] for e in events[1:]] == ["2", "1"]


def test_len_and_missing_path(ml100k: Path, tmp_path: Path):
    ds = MovieLens(ml100k)
    assert len(ds) == ds.total == 7 == len(list(ds))
    with pytest.raises(FileNotFoundError):
        load_movielens(tmp_path / "nope")
    with pytest.raises(FileNotFoundError):
        load_movielens(tmp_path)  # a directory without ratings


def test_real_movielens_100k(shared_datasets: Path):
    ds = MovieLens(shared_datasets / "movielens-100k")
    events = list(ds)
    types = Counter(e["type"] for e in events)
    assert types == {"rating": 100_000, "item_upsert": 1_682}
    assert len(ds) == len(events)
    assert all(e["type"] == "item_upsert" for e in events[:1682])
    ratings = events[1682:]
    assert len({e["user_id"] for e in ratings}) == 943
    assert len({e["item_id"] for e in ratings}) == 1682
    ts = [e["ts"] for e in ratings]
    assert ts == sorted(ts)
    assert len({e["event_id"] for e in events}) == len(events)
    assert Counter(e["value"] for e in ratings).keys() == {1, 2, 3, 4, 5}
    for e in events:
        validate_event(e, now_ms=10**13, max_future_ms=0)
    toy = next(e for e in events if e["type"] == "item_upsert" and e["item_id"] == "1")
    assert toy["text"] == "Toy Story (1995)" and toy["tags"] == ["Animation", "Children's", "Comedy"]
