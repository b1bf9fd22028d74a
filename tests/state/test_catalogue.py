from freshrec.state.catalogue import Catalogue


def up(item, ts, cat="news"):
    return {"type": "item_upsert", "item_id": item, "ts": ts, "category": cat, "tags": [], "text": ""}


def test_last_writer_wins_by_event_time_and_delete_is_sticky_against_older_upserts():
    c = Catalogue()
    assert c.apply(up("a", 10, "sport"))
    assert c.apply({"type": "item_delete", "item_id": "a", "ts": 20})
    assert not c.apply(up("a", 15, "sport"))  # late, older upsert: ignored
    assert c.is_deleted("a") and "a" not in c.by_category.get("sport", set())
    assert c.apply(up("a", 30, "tech"))  # a newer upsert restores it
    assert not c.is_deleted("a") and c.category("a") == "tech"


def test_rebuild_from_rows_restores_indices():
    c = Catalogue()
    c.apply(up("a", 1, "x"))
    c.apply(up("b", 1, "y"))
    c.apply({"type": "item_delete", "item_id": "b", "ts": 2})
    again = Catalogue(dict(c.rows))
    assert again.by_category == {"x": {"a"}} and again.deleted == {"b"}
