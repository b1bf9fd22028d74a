import os

import hnswlib
import numpy as np
import pytest

from freshrec.state.ann import MAX_OVERFLOW, IndexRefresher, ItemIndex
from freshrec.state.embeddings import OnlineMF

DIM = 16


def _data(n=2000, dim=DIM, seed=0, spread=(0.2, 2.0)):
    """Random Gaussian vectors, each scaled by a factor drawn from ``spread`` (varied norms)."""
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(n, dim)).astype(np.float32)
    vecs *= rng.uniform(*spread, size=(n, 1)).astype(np.float32)
    return [f"i{j}" for j in range(n)], vecs, rng


def _brute(vecs, q, space="ip"):
    if space == "cosine":
        vecs = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
        q = q / np.linalg.norm(q)
    return vecs @ q


def _index(ids, vecs, **kw):
    index = ItemIndex(vecs.shape[1], **kw)
    index.upsert_many(ids, vecs)
    return index


@pytest.mark.parametrize("space, spread, ef", [
    ("ip", (1.0, 1.0), 100),  # plain Gaussian vectors, defaults
    ("ip", (0.2, 2.0), 200),  # widely varied norms: the MIPS reduction needs a wider search
    ("cosine", (0.2, 2.0), 100),
])
def test_top10_recall_against_brute_force(space, spread, ef):
    ids, vecs, rng = _data(spread=spread)
    index = _index(ids, vecs, space=space, ef=ef)
    recalls = []
    for q in rng.normal(size=(50, DIM)).astype(np.float32):
        truth = {ids[j] for j in np.argsort(-_brute(vecs, q, space))[:10]}
        got = index.query(q, 10)
        assert len(got) == 10
        recalls.append(len(truth & {i for i, _ in got}) / 10)
    assert np.mean(recalls) >= 0.9


def test_ip_scores_are_inner_products_best_first():
    ids, vecs, rng = _data(300)
    index = _index(ids, vecs)
    q = rng.normal(size=DIM).astype(np.float32)
    got = index.query(q, 20)
    exact = dict(zip(ids, _brute(vecs, q).tolist()))
    for item, score in got:
        assert score == pytest.approx(exact[item], abs=1e-3)
    assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)


@pytest.mark.parametrize("update", ["reinsert", "inplace"])
def test_upsert_replaces_the_vector(update):
    ids, vecs, rng = _data(500)
    index = _index(ids, vecs, update=update)
    # the negated longest vector: the unique best inner product for its own direction
    target = -vecs[int(np.argmax(np.linalg.norm(vecs, axis=1)))]
    old = vecs[42].copy()
    index.upsert_many(["i42"], target)
    assert len(index) == 500
    assert index.query(target, 1)[0][0] == "i42"
    assert np.allclose(index.vectors(["i42"])[0], target, atol=1e-5)
    # the old position no longer returns it with its old score, and nothing is left behind
    near_old = index.query(old, 500)
    assert len(near_old) == 500 and [i for i, _ in near_old].count("i42") == 1
    assert dict(near_old)["i42"] == pytest.approx(float(target @ old), abs=1e-3)
    assert index.n_stale == (1 if update == "reinsert" else 0)


def test_inplace_new_items_reuse_deleted_slots():
    ids, vecs, _ = _data(100)
    index = _index(ids, vecs, update="inplace")
    for j in range(10):
        index.mark_deleted(ids[j])
    assert index.n_stale == 10
    index.upsert_many([f"new{j}" for j in range(4)], vecs[:4])
    assert index.n_slots == 100 and index.n_stale == 6
    got = {i for i, _ in index.query(vecs[0], 200)}
    assert len(got) == 94 and "new0" in got and "i0" not in got


def test_mark_deleted_excludes_and_upsert_restores():
    ids, vecs, _ = _data(300)
    index = _index(ids, vecs)
    top = index.query(vecs[5], 1)[0][0]
    assert index.mark_deleted(top)
    assert not index.mark_deleted(top) and not index.mark_deleted("unknown")
    assert len(index) == 299 and top not in index
    everything = [i for i, _ in index.query(vecs[5], 1000)]
    assert len(everything) == 299 and top not in everything
    index.upsert_many([top], vecs[ids.index(top)][None])
    assert index.query(vecs[5], 1)[0][0] == top


@pytest.mark.parametrize("filter_threshold", [10_000, 0])  # over-fetch, then hnswlib's filter
def test_exclude_set_is_respected(filter_threshold):
    ids, vecs, rng = _data(1000)
    index = _index(ids, vecs, filter_threshold=filter_threshold)
    q = rng.normal(size=DIM).astype(np.float32)
    order = [ids[j] for j in np.argsort(-_brute(vecs, q))]
    exclude = set(order[:30]) | {"not-indexed"}
    got = [i for i, _ in index.query(q, 10, exclude=exclude)]
    assert len(got) == 10 and not exclude & set(got)
    assert len(set(got) & set(order[30:40])) >= 9
    # a dict (like a user's seen map) works as an exclusion set too
    assert [i for i, _ in index.query(q, 10, exclude=dict.fromkeys(exclude))] == got


def test_k_larger_than_live_count():
    ids, vecs, rng = _data(200)
    index = _index(ids, vecs)
    q = rng.normal(size=DIM).astype(np.float32)
    assert len(index.query(q, 500)) == 200
    for j in range(190):
        index.mark_deleted(ids[j])
    got = index.query(q, 50)
    assert sorted(i for i, _ in got) == sorted(ids[190:])
    assert len(index.query(q, 50, exclude={ids[195]})) == 9
    assert index.query(q, 5, exclude=set(ids)) == []
    assert ItemIndex(DIM).query(q, 5) == []
    assert index.query(q, 0) == []


def test_grows_beyond_initial_capacity():
    ids, vecs, _ = _data(300)
    index = ItemIndex(DIM, capacity=8)
    for start in range(0, 300, 50):
        index.upsert_many(ids[start:start + 50], vecs[start:start + 50])
    assert len(index) == 300 and index.capacity >= 300
    assert index.query(vecs[299], 1)[0][0] == ids[int(np.argmax(vecs @ vecs[299]))]


def test_save_load_round_trip(tmp_path):
    ids, vecs, rng = _data(500)
    index = _index(ids, vecs, ef=77)
    index.mark_deleted("i3")
    index.upsert_many(["i4"], vecs[5][None])
    path = tmp_path / "items.hnsw"
    index.save(path)
    loaded = ItemIndex.load(path)
    assert loaded._index.ef == 77  # hnswlib alone would reset ef to 10
    assert (len(loaded), loaded.n_stale, loaded.n_slots) == (len(index), index.n_stale, index.n_slots)
    for q in rng.normal(size=(5, DIM)).astype(np.float32):
        assert loaded.query(q, 10) == index.query(q, 10)
    loaded.upsert_many(["fresh"], vecs[0][None] * 0.5)  # still writable after load
    assert "fresh" in {i for i, _ in loaded.query(vecs[0], len(loaded))} and "i3" not in loaded
    assert loaded.vectors(["fresh"])[0] == pytest.approx(vecs[0] * 0.5)


def test_rebuild_drops_deleted_vectors_from_saved_files(tmp_path):
    ids, vecs, rng = _data(400)
    index = _index(ids, vecs)
    secret = vecs[10].tobytes()
    for j in range(0, 400, 2):  # delete half, including i10
        index.mark_deleted(ids[j])
    index.upsert_many(["i1"], vecs[1][None] * 0.5)  # and replace one
    assert index.needs_rebuild()
    before = tmp_path / "before.hnsw"
    index.save(before)
    assert secret in before.read_bytes()  # hnswlib keeps deleted vectors in saved files
    live = [ids[j] for j in range(1, 400, 2)]
    copy = index.rebuilt(live, index.vectors(live))  # built aside: the original is untouched
    assert copy.n_slots == 200 and index.n_slots == 401 and index.n_stale == 201
    index.rebuild()
    assert not index.needs_rebuild() and index.n_stale == 0 and index.n_slots == 200
    after = tmp_path / "after.hnsw"
    index.save(after)
    assert secret not in after.read_bytes()
    assert os.path.getsize(after) < 0.6 * os.path.getsize(before)
    assert ItemIndex.load(after).n_slots == 200
    q = rng.normal(size=DIM).astype(np.float32)
    assert {i for i, _ in index.query(q, 300)} == set(live)
    assert index.query(q, 10) == copy.query(q, 10)
    assert np.allclose(index.vectors(["i1"])[0], vecs[1] * 0.5)


def test_ip_norm_overflow_is_scored_exactly_until_rebuild(tmp_path):
    ids, vecs, rng = _data(300)
    index = _index(ids, vecs)
    big = vecs[0] / np.linalg.norm(vecs[0]) * 50.0  # far beyond phi
    index.upsert_many(["big"], big[None])
    assert not index.needs_rebuild()
    for q in (big, big / 50 + rng.normal(size=DIM).astype(np.float32) * 0.3):
        got = index.query(q, 3)
        assert got[0][0] == "big" and got[0][1] == pytest.approx(float(big @ q), rel=1e-4)
    assert "big" not in {i for i, _ in index.query(big, 3, exclude={"big"})}
    index.save(tmp_path / "x")
    assert ItemIndex.load(tmp_path / "x").query(big, 1) == index.query(big, 1)
    more = [f"big{j}" for j in range(MAX_OVERFLOW)]
    index.upsert_many(more, np.tile(big * 0.9, (len(more), 1)))
    assert index.needs_rebuild()
    index.rebuild()
    assert not index.needs_rebuild() and not index._over
    assert index.query(big, 1)[0][0] == "big"


def test_hnswlib_behaviour_the_module_works_around(tmp_path):
    """If hnswlib changes any of this, revisit ann.py's notes (and maybe simplify)."""
    vecs = np.eye(4, dtype=np.float32)
    raw = hnswlib.Index(space="ip", dim=4)
    raw.init_index(max_elements=10, allow_replace_deleted=True)
    raw.add_items(vecs, [0, 1, 2, 3])
    with pytest.raises(RuntimeError):  # more results than elements
        raw.knn_query(vecs[0], k=5)
    raw.mark_deleted(1)
    raw.add_items(vecs[2:3] * 2, [0], replace_deleted=True)  # a live label into a deleted slot
    labels, _ = raw.knn_query(vecs[0] + vecs[2], k=3)
    assert list(labels[0]).count(0) == 2  # the same label twice
    path = str(tmp_path / "raw.bin")
    raw.save_index(path)
    again = hnswlib.Index(space="ip", dim=4)
    again.load_index(path)
    assert again.ef == 10


def _trained_model():
    model = OnlineMF(n_factors=8, seed=1)
    for u in range(30):
        for i in range(12):
            model.learn_one(f"u{u}", f"m{(u * 5 + i) % 80}")
    return model


def test_refresher_indexes_dirty_items_in_one_batch():
    model = _trained_model()
    index = ItemIndex(model.index_dim)
    stats = IndexRefresher(model, index, min_drift=0.0).refresh()
    assert stats.indexed == model.n_items == len(index) and model.dirty_items() == []
    for user in ("u0", "u7", "new-user"):
        scores = model.score_items(user)
        exact = [model.item_ids[j] for j in np.argsort(-scores)[:5]]
        got = index.query(model.query_vector(user), 5)
        assert [i for i, _ in got] == exact
        assert [s for _, s in got] == pytest.approx(np.sort(scores)[::-1][:5].tolist(), abs=1e-4)
    model.learn_one("u0", "m79")
    dirty = set(model.dirty_items())
    assert "m79" in dirty
    stats = IndexRefresher(model, index, min_drift=0.0).refresh()
    assert stats.indexed == len(dirty)
    assert np.allclose(index.vectors(["m79"]), model.index_vectors(["m79"]))


def test_refresher_skips_small_drift_and_defers_over_budget():
    model = _trained_model()
    index = ItemIndex(model.index_dim)
    refresher = IndexRefresher(model, index, min_drift=0.05, max_batch=30)
    first = refresher.refresh()
    assert (first.indexed, first.deferred) == (30, model.n_items - 30)
    while model.dirty_items():
        refresher.refresh()
    assert len(index) == model.n_items
    model.learn_negative("u1", "m3", weight=0.001)  # a tiny change
    stats = refresher.refresh()
    assert (stats.dirty, stats.indexed, stats.skipped) == (1, 0, 1)
    assert model.dirty_items() == []
    for _ in range(30):
        model.learn_one("u1", "m3")  # a big one
    stats = refresher.refresh()
    assert "m3" not in model.dirty_items() and stats.indexed >= 1
    assert np.allclose(index.vectors(["m3"]), model.index_vectors(["m3"]))


def test_refresher_keep_removes_deleted_items_and_rebuild_compacts():
    model = _trained_model()
    index = ItemIndex(model.index_dim)
    refresher = IndexRefresher(model, index, keep=lambda item: item != "m5")
    refresher.refresh()
    assert "m5" not in index and len(index) == model.n_items - 1
    for _ in range(3):
        model.learn_one("u2", "m6")
        refresher.refresh()
    assert index.n_stale > 0
    model.learn_one("u2", "m6")
    assert "m6" in model.dirty_items()
    refresher.rebuild()
    assert index.n_stale == 0 and len(index) == model.n_items - 1 and "m5" not in index
    assert "m6" not in model.dirty_items()  # rebuilt from the current vector
    assert np.allclose(index.vectors(["m6"]), model.index_vectors(["m6"]))


def test_refresher_rejects_a_mismatched_index():
    with pytest.raises(ValueError):
        IndexRefresher(OnlineMF(n_factors=8), ItemIndex(8))  # needs 9: the bias dimension


class _GraphGivesUp:
    """An hnswlib index whose searches fail as they do when too few live elements are found."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def knn_query(self, *args, **kwargs):
        raise RuntimeError("Cannot return the results in a contiguous 2D array.")


@pytest.mark.parametrize("space, filter_threshold", [("ip", 10_000), ("ip", 0), ("cosine", 10_000)])
def test_query_falls_back_to_an_exact_scan(space, filter_threshold):
    ids, vecs, rng = _data(300)
    index = _index(ids, vecs, space=space, filter_threshold=filter_threshold)
    index.mark_deleted("i0")
    q = rng.normal(size=DIM).astype(np.float32)
    exact = _brute(vecs, q, space)
    order = [ids[j] for j in np.argsort(-exact) if ids[j] != "i0"]
    index._index = _GraphGivesUp(index._index)
    got = index.query(q, 10, exclude={order[0]})
    assert [i for i, _ in got] == order[1:11]
    assert [s for _, s in got] == pytest.approx([exact[ids.index(i)] for i in order[1:11]], abs=1e-3)


@pytest.mark.parametrize("space", ["ip", "cosine"])
def test_query_many_answers_each_row_as_query_does(space):
    ids, vecs, rng = _data(500)
    index = _index(ids, vecs, space=space)
    index.mark_deleted("i1")
    if space == "ip":  # an item whose norm outgrew phi is scored beside the graph
        index.upsert_many(["big"], (vecs[0] / np.linalg.norm(vecs[0]) * 50.0)[None])
    Q = rng.normal(size=(20, DIM)).astype(np.float32)
    Q[0] = vecs[0]
    labels, scores = index.query_many(Q, 15, num_threads=2, exact_max_work=0)  # the graph, however small
    assert labels.shape == scores.shape == (20, 15)
    for r in range(20):
        single = index.query(Q[r], 15)
        assert index.items_of(labels[r]) == [i for i, _ in single]
        assert scores[r].tolist() == pytest.approx([s for _, s in single], rel=1e-4, abs=1e-4)
    if space == "ip":
        assert index.items_of(labels[0])[0] == "big"
    few, few_scores = index.query_many(Q[:2], len(index) + 5, exact_max_work=0)  # more than the live items: -1 padded
    assert (few[:, len(index):] == -1).all() and np.isneginf(few_scores[:, len(index):]).all()
    assert "i1" not in index.items_of(few[0]) and None not in index.items_of(few[0, :len(index)])


@pytest.mark.parametrize("space", ["ip", "cosine"])
def test_query_many_scans_a_small_index_exactly(space):
    ids, vecs, rng = _data(500)
    index = _index(ids, vecs, space=space)  # 500 x 17 is under EXACT_MAX_WORK: one matrix product
    index.query_many(vecs[:2], 5, exact_max_work=0)  # told to walk the graph: no scan prepared
    assert index._live_vectors is None
    index.mark_deleted("i1")
    index.upsert_many(["i2"], vecs[3:4] * 0.5)  # re-inserted under a new label, the old one stale
    if space == "ip":  # an item whose norm outgrew phi is scored like the others
        index.upsert_many(["big"], (vecs[0] / np.linalg.norm(vecs[0]) * 50.0)[None])
    truth = {i: v for i, v in zip(ids, vecs) if i != "i1"}
    truth["i2"] = vecs[3] * 0.5
    if space == "ip":
        truth["big"] = vecs[0] / np.linalg.norm(vecs[0]) * 50.0
    live, V = list(truth), np.stack(list(truth.values()))
    Q = rng.normal(size=(20, DIM)).astype(np.float32)
    labels, scores = index.query_many(Q, 15)
    for r in range(20):
        exact = _brute(V, Q[r], space)
        best = np.argsort(-exact, kind="stable")[:15]
        assert index.items_of(labels[r]) == [live[j] for j in best]
        assert scores[r].tolist() == pytest.approx(exact[best].tolist(), rel=1e-4, abs=1e-4)
    few, few_scores = index.query_many(Q[:2], len(index) + 5)  # more than the live items: -1 padded
    assert (few[:, len(index):] == -1).all() and np.isneginf(few_scores[:, len(index):]).all()
    assert sorted(index.items_of(few[0, :len(index)])) == sorted(live)
    index.upsert_many(["new"], Q[:1] * 100.0)  # writes are seen by the next scan
    assert index.items_of(index.query_many(Q[:1], 1)[0][0]) == ["new"]


def test_label_items_map_every_label_until_a_rebuild_restarts_them():
    ids, vecs, _ = _data(50)
    index = _index(ids, vecs)
    index.upsert_many(["i3"], vecs[4:5])  # i3 moves to a new label; its old one is stale
    items = index.label_items()
    assert len(items) == index.n_labels == 51 and items[3] is None and items[50] == "i3"
    assert index.label_items(49) == ["i49", "i3"]
    gen = index.generation
    index.rebuild()
    assert index.generation == gen + 1 and index.n_labels == 50 and None not in index.label_items()


@pytest.mark.parametrize("space", ["ip", "cosine"])
@pytest.mark.parametrize("update", ["reinsert", "inplace"])
def test_indexed_vectors_read_from_the_mirror_equal_what_hnswlib_holds(tmp_path, space, update):
    rng = np.random.default_rng(3)
    index = ItemIndex(8, space=space, update=update, capacity=4)
    ids = [f"i{k}" for k in range(30)]
    index.upsert_many(ids, rng.normal(size=(30, 8)).astype(np.float32))  # grows past the capacity
    index.upsert_many(ids[:10], rng.normal(size=(10, 8)).astype(np.float32))  # replaced
    index.mark_deleted("i3")
    live = [i for i in ids if i != "i3"]

    def held(ix):  # straight from hnswlib
        raw = np.asarray(ix._index.get_items([ix._label[i] for i in live], return_type="numpy"), dtype=np.float32)
        return raw[:, :8]

    np.testing.assert_allclose(index.vectors(live), held(index), rtol=1e-6, atol=1e-6)
    index.save(tmp_path / "ix")
    loaded = ItemIndex.load(tmp_path / "ix")
    np.testing.assert_allclose(loaded.vectors(live), held(index), rtol=1e-6, atol=1e-6)
    index.rebuild()
    np.testing.assert_allclose(index.vectors(live), held(index), rtol=1e-6, atol=1e-6)
