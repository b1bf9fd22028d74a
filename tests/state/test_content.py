import math
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from freshrec.state.ann import ItemIndex
from freshrec.state.catalogue import Catalogue
from freshrec.state.content import ContentEncoder, ContentIndex


def _row(category=None, tags=(), text="", deleted=False, ts=1):
    return {"category": category, "tags": list(tags), "text": text, "created_at": ts,
            "deleted": deleted, "ts": ts}


SCIFI_A = _row("sci-fi", ["space", "aliens"], "A crew of explorers travel through deep space to a distant galaxy")
SCIFI_B = _row("Sci-Fi", ["Space", "robots"], "Robots and astronauts on a space station orbiting a distant planet")
COOKING = _row("cooking", ["recipes", "pasta"], "How to cook fresh pasta with tomato sauce and basil")


def _distractors(n=300, seed=0):
    """Items of other categories, tags and vocabulary than the sci-fi ones."""
    rng = np.random.default_rng(seed)
    cats = ["cooking", "sports", "finance", "gardening", "music", "travel"]
    vocab = [f"word{j}" for j in range(400)]
    rows = {}
    for j in range(n):
        cat = cats[j % len(cats)]
        rows[f"d{j}"] = _row(cat, [f"{cat}{rng.integers(5)}", f"tag{rng.integers(50)}"],
                             " ".join(rng.choice(vocab, size=12)))
    return rows


def _filled(rows) -> ContentIndex:
    index = ContentIndex()
    for item, row in rows.items():
        index.upsert(item, row)
    index.flush()
    return index


# ---------------------------------------------------------------- encoder


def test_tokens_lowercase_stopwords_and_sublinear_tf():
    enc = ContentEncoder(category_weight=2.0, tag_weight=1.5, text_weight=1.0)
    toks = dict(enc.tokens(_row("Sci-Fi", ["Space", "space", " Aliens "],
                                "The ship, THE ship and a x the Ship-2 in space")))
    assert toks == {
        "c:sci-fi": 2.0,
        "t:space": 1.5,
        "t:aliens": 1.5,
        "w:ship": pytest.approx(1.0 + math.log(3)),
        "w:space": 1.0,
    }
    assert enc.tokens(None) == [] and enc.tokens(_row()) == []


def test_encoding_is_deterministic_and_unit_norm():
    enc = ContentEncoder(dim=64)
    v1 = enc.encode(SCIFI_A)
    v2 = ContentEncoder(dim=64).encode(dict(SCIFI_A))
    assert v1.shape == (64,) and v1.dtype == np.float32
    assert np.array_equal(v1, v2)
    assert np.linalg.norm(v1) == pytest.approx(1.0, abs=1e-6)
    assert np.linalg.norm(enc.encode(COOKING)) == pytest.approx(1.0, abs=1e-6)
    # signed hashing: some coordinates are negative
    assert (v1 < 0).any() and (v1 > 0).any()


def test_encoding_is_the_same_in_another_process():
    """Python's hash() is salted per process; the encoder must not depend on it."""
    code = ("import sys; from freshrec.state.content import ContentEncoder; "
            f"sys.stdout.write(ContentEncoder().encode({SCIFI_A!r}).tobytes().hex())")
    outs = set()
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True).stdout
        outs.add(out)
    assert outs == {ContentEncoder().encode(SCIFI_A).tobytes().hex()}


def test_shared_attributes_are_more_similar_than_unrelated_ones():
    enc = ContentEncoder()
    a, b, c = enc.encode(SCIFI_A), enc.encode(SCIFI_B), enc.encode(COOKING)
    assert a @ b > 0.3
    assert a @ b > abs(a @ c) + 0.25
    # each field alone carries similarity
    same_cat = enc.encode(_row("sci-fi")) @ enc.encode(_row("sci-fi", text="unrelated words here"))
    same_tag = enc.encode(_row(tags=["space"])) @ enc.encode(_row("news", ["space"]))
    same_word = enc.encode(_row(text="galaxy")) @ enc.encode(_row(text="galaxy far away"))
    assert min(same_cat, same_tag, same_word) > 0.4


def test_empty_row_encodes_to_zeros_and_is_not_indexed():
    enc = ContentEncoder(dim=32)
    for row in (None, {}, _row(), _row(text="the and of a"), _row(category="  ", tags=[""])):
        vec = enc.encode(row)
        assert vec.shape == (32,) and not vec.any()
    index = ContentIndex(ContentEncoder(dim=32))
    index.upsert("empty", _row(text="the of"))
    index.upsert("ok", _row("sci-fi"))
    assert index.flush() == 1
    assert "empty" not in index and index.vector("empty") is None
    assert len(index) == 1 and len(index.index) == 1
    # an item that loses all its attributes leaves the index
    index.upsert("ok", _row())
    assert index.flush() == 1
    assert len(index) == 0 and len(index.index) == 0


# ---------------------------------------------------------------- index


def test_new_item_is_retrieved_before_any_interaction():
    rows = _distractors()
    rows["scifi_old"] = SCIFI_A
    index = _filled(rows)
    # a brand-new item arrives through the catalogue: attributes only, no clicks anywhere
    cat = Catalogue()
    cat.apply({"type": "item_upsert", "item_id": "scifi_new", "ts": 5, "category": "sci-fi",
               "tags": ["space", "robots"], "text": SCIFI_B["text"]})
    index.upsert("scifi_new", cat.rows["scifi_new"])
    assert index.vector("scifi_new") is not None  # known at once ...
    assert index.query(index.profile(["scifi_old"]), 5, exclude={"scifi_old"})[0][0] != "scifi_new"
    assert index.flush() == 1  # ... queryable after the next flush
    user = index.profile(["scifi_old"])
    top = index.query(user, 5, exclude={"scifi_old"})
    assert top[0][0] == "scifi_new"
    assert top[0][1] == pytest.approx(float(index.similarity(user, ["scifi_new"])[0]), abs=1e-5)
    assert top[0][1] > top[1][1] + 0.2


def test_flush_applies_upserts_in_one_batch(monkeypatch):
    calls = []
    real = ItemIndex.upsert_many

    def spy(self, ids, vectors):
        calls.append(len(ids))
        return real(self, ids, vectors)

    monkeypatch.setattr(ItemIndex, "upsert_many", spy)
    index = ContentIndex()
    for item, row in _distractors(50).items():
        index.upsert(item, row)
    assert calls == [] and len(index.index) == 0 and len(index) == 50
    assert index.flush() == 50
    assert calls == [50] and len(index.index) == 50
    assert index.flush() == 0 and calls == [50]
    # an unchanged re-upsert queues nothing
    index.upsert("d0", _distractors(50)["d0"])
    assert index.n_pending == 0 and index.flush() == 0


def test_delete_removes_from_results_and_vector():
    rows = _distractors(100)
    rows.update(a=SCIFI_A, b=SCIFI_B)
    index = _filled(rows)
    prof = index.profile(["a"])
    assert index.query(prof, 1, exclude={"a"})[0][0] == "b"
    index.delete("b")
    assert index.vector("b") is None and "b" not in index
    assert index.flush() == 1
    assert "b" not in [i for i, _ in index.query(prof, len(rows))]
    assert len(index) == 101 and len(index.index) == 101
    # a deleted catalogue row removes it too
    index.upsert("a", {"deleted": True, "ts": 9})
    assert index.vector("a") is None
    assert index.flush() == 1 and "a" not in [i for i, _ in index.query(prof, len(rows))]


def test_reupsert_with_changed_category_moves_the_item():
    rows = _distractors(100)
    rows.update(a=SCIFI_A, b=SCIFI_B, cook=COOKING)
    index = _filled(rows)
    scifi, cooking = index.profile(["a"]), index.profile(["cook"])
    assert index.query(scifi, 1, exclude={"a"})[0][0] == "b"
    assert "b" not in [i for i, _ in index.query(cooking, 10, exclude={"cook"})]
    before = index.similarity(scifi, ["b"])[0], index.similarity(cooking, ["b"])[0]
    # the category alone moves it ...
    index.upsert("b", dict(SCIFI_B, category="cooking"))
    assert index.n_pending == 1 and index.flush() == 1
    mid = index.similarity(scifi, ["b"])[0], index.similarity(cooking, ["b"])[0]
    assert mid[0] < before[0] - 0.1 and mid[1] > before[1] + 0.1
    # ... and with cooking tags too it becomes the nearest item to the cooking profile
    index.upsert("b", dict(SCIFI_B, category="cooking", tags=["recipes", "pasta"]))
    assert index.flush() == 1
    after = index.similarity(scifi, ["b"])[0], index.similarity(cooking, ["b"])[0]
    assert after[0] < mid[0] and after[1] > mid[1] + 0.2
    item, score = index.query(cooking, 1, exclude={"cook"})[0]
    assert item == "b" and score == pytest.approx(float(after[1]), abs=1e-5)  # the index has the new vector
    assert len(index.index) == len(rows)  # moved, not duplicated


def _canonical(results):
    """Query results with ties ordered by id (ties may come out in any order)."""
    return sorted(((round(score, 5), item) for item, score in results), key=lambda p: (-p[0], p[1]))


def test_state_round_trip_gives_the_same_results():
    rows = _distractors(200)
    rows.update(a=SCIFI_A, b=SCIFI_B, cook=COOKING)
    index = _filled(rows)
    index.delete("d3")
    index.flush()
    # queued changes survive the round trip too, still queued
    index.upsert("pending_new", _row("sci-fi", ["space"], "space robots"))
    index.upsert("cook", dict(COOKING, category="sci-fi"))
    index.delete("d4")
    state = pickle.loads(pickle.dumps(index.to_state()))
    restored = ContentIndex.from_state(state)
    assert isinstance(restored, ContentIndex) and restored.encoder.params() == index.encoder.params()
    assert len(restored) == len(index) and restored.n_pending == index.n_pending == 3
    profiles = [index.profile(["a"]), index.profile(["cook"]), index.profile(["d0", "d1"], [2.0, 1.0])]
    n = len(index.index)
    for prof in profiles:
        assert _canonical(restored.query(prof, n)) == _canonical(index.query(prof, n))
        top = [s for _, s in index.query(prof, 10)]
        assert [s for _, s in restored.query(prof, 10)] == pytest.approx(top, abs=1e-6)
        assert np.array_equal(restored.similarity(prof, list(rows)), index.similarity(prof, list(rows)))
    assert restored.flush() == index.flush() == 3
    assert len(restored.index) == len(index.index) == n  # one new, one deleted
    for prof in profiles:
        assert _canonical(restored.query(prof, n)) == _canonical(index.query(prof, n))
    assert "pending_new" in [i for i, _ in restored.query(profiles[0], 10)]
    assert restored.vector("d3") is None and restored.vector("d4") is None


def test_profile_of_unknown_items_is_none_and_similarity_zero():
    index = _filled({"a": SCIFI_A, "cook": COOKING})
    assert index.profile([]) is None
    assert index.profile(["nope", "gone"]) is None
    assert index.query(None, 5) == []
    sims = index.similarity(None, ["a", "cook"])
    assert sims.dtype == np.float32 and np.array_equal(sims, np.zeros(2, np.float32))
    prof = index.profile(["a", "nope"])  # unknown ids are skipped
    assert np.allclose(prof, index.vector("a"))
    sims = index.similarity(prof, ["a", "nope", "cook"])
    assert sims[0] == pytest.approx(1.0, abs=1e-5) and sims[1] == 0.0 and abs(sims[2]) < 0.5


def test_profile_is_a_weighted_unit_mean():
    index = _filled({"a": SCIFI_A, "cook": COOKING})
    prof = index.profile(["a", "cook"], [3.0, 1.0])
    expected = 3.0 * index.vector("a") + index.vector("cook")
    assert np.allclose(prof, expected / np.linalg.norm(expected), atol=1e-6)
    sims = index.similarity(prof, ["a", "cook"])
    assert sims[0] > sims[1]
    with pytest.raises(ValueError):
        index.profile(["a"], [1.0, 2.0])
