import numpy as np
import pytest

from freshrec.state.embeddings import OnlineMF


def _planted(model: OnlineMF, passes: int = 6, seed: int = 0) -> None:
    """Users a* engage only with items x*, users b* only with items y*."""
    events = [(f"a{u}", f"x{i}") for u in range(15) for i in range(10)]
    events += [(f"b{u}", f"y{i}") for u in range(15) for i in range(10)]
    rng = np.random.default_rng(seed)
    for _ in range(passes):
        for p in rng.permutation(len(events)):
            model.learn_one(*events[p])


def _margins(model: OnlineMF) -> tuple[float, float, float]:
    """(mean within-group score - mean cross-group score, worst within, best cross)."""
    within, cross = [], []
    for g, own, other in (("a", "x", "y"), ("b", "y", "x")):
        for u in range(15):
            within += [model.predict_one(f"{g}{u}", f"{own}{i}") for i in range(10)]
            cross += [model.predict_one(f"{g}{u}", f"{other}{i}") for i in range(10)]
    return float(np.mean(within) - np.mean(cross)), min(within), max(cross)


@pytest.mark.parametrize("params, min_gap", [
    ({}, 2.0),
    ({"negatives": "uniform"}, 2.0),
    ({"negatives": "popularity"}, 2.0),
    ({"loss": "squared", "lr": 0.1}, 0.25),  # scores aim at 1 and 0: smaller gaps
])
def test_learns_planted_groups(params, min_gap):
    model = OnlineMF(n_factors=8, seed=1, **params)
    _planted(model)
    gap, worst_within, best_cross = _margins(model)
    assert gap > min_gap
    assert worst_within > best_cross  # every user ranks all own-group items above the others
    # batch scoring agrees with predict_one
    scores = model.score_items("a0", ["x0", "y0"])
    assert scores[0] == pytest.approx(model.predict_one("a0", "x0"), abs=1e-5)
    assert scores[1] == pytest.approx(model.predict_one("a0", "y0"), abs=1e-5)


def test_untrained_model_has_no_group_structure():
    # the planted-structure test can fail: without learning there is no margin
    model = OnlineMF(n_factors=8, seed=1, lr=0.0)
    _planted(model, passes=1)
    gap, _, _ = _margins(model)
    assert abs(gap) < 0.1


def test_same_seed_same_model_different_seed_different_model():
    states = []
    for seed in (3, 3, 4):
        model = OnlineMF(n_factors=8, seed=seed, negatives="uniform")
        _planted(model, passes=2)
        states.append(model.to_state())
    a, b, c = states
    assert np.array_equal(a["item_factors"], b["item_factors"])
    assert np.array_equal(a["user_factors"], b["user_factors"])
    assert not np.array_equal(a["item_factors"], c["item_factors"])


def test_new_rows_do_not_depend_on_arrival_order():
    m1, m2 = OnlineMF(seed=5), OnlineMF(seed=5)
    m1.learn_negative("u", "first")
    m2.learn_negative("v", "other")
    m2.learn_negative("u", "first")
    assert np.array_equal(m1.item_vector("first"), m2.item_vector("first"))


def test_capacity_doubles_and_keeps_rows():
    model = OnlineMF(n_factors=4, initial_capacity=2)
    model.learn_negative("u0", "first")
    first = model.item_vector("first")
    for j in range(100):
        model.learn_negative("u1", f"i{j}")  # touches only u1 and i{j}
        model.learn_negative(f"user{j}", "first", weight=0.0)  # new users; weight 0: no change
    assert model.n_items == 101 and model.n_users == 102
    assert model._V.shape[0] == 128 and model._U.shape[0] == 128  # 2, 4, ..., 128
    assert np.array_equal(model.item_vector("first"), first)
    assert model.score_items("u1").shape == (101,)


def test_unknown_ids_never_crash_and_reads_create_nothing():
    empty = OnlineMF(n_factors=4)
    assert empty.score_items("nobody").shape == (0,)
    assert empty.predict_one("nobody", "nothing") == 0.0
    model = OnlineMF(n_factors=4)
    _planted(model, passes=1)
    n_users, n_items = model.n_users, model.n_items
    assert np.isfinite(model.predict_one("nobody", "x0"))
    assert np.isfinite(model.predict_one("a0", "nothing"))
    assert not model.user_vector("nobody").any() and not model.item_vector("nothing").any()
    # a new user is ranked by item bias (popularity)
    assert np.allclose(model.score_items("nobody"), model._b[:n_items])
    mixed = model.score_items("a0", ["x0", "nothing"])
    assert mixed.shape == (2,) and np.isfinite(mixed).all()
    assert mixed[1] == pytest.approx(model.item_bias("nothing"))
    assert model.index_vectors(["nothing", "x0"]).shape == (2, model.index_dim)
    assert (model.n_users, model.n_items) == (n_users, n_items)


def test_state_round_trip_gives_identical_scores_and_continues_identically():
    model = OnlineMF(n_factors=8, seed=2)
    _planted(model, passes=2)
    restored = OnlineMF.from_state(model.to_state())
    assert restored.params() == model.params()
    for user in ("a0", "b3", "nobody"):
        assert np.array_equal(restored.score_items(user), model.score_items(user))
    assert sorted(restored.dirty_items()) == sorted(model.dirty_items())
    for m in (model, restored):  # same sampler queue and RNG: learning stays in lockstep
        m.learn_one("a0", "y1")
        m.learn_one("new-user", "new-item")
    assert np.array_equal(restored.score_items("a0"), model.score_items("a0"))
    assert np.array_equal(restored.score_items("new-user"), model.score_items("new-user"))


def test_state_round_trip_with_popularity_sampler():
    model = OnlineMF(n_factors=4, seed=2, negatives="popularity", window=50)
    _planted(model, passes=1)
    restored = OnlineMF.from_state(model.to_state())
    for m in (model, restored):
        m.learn_one("a1", "x1")
    assert np.array_equal(restored.to_state()["item_factors"], model.to_state()["item_factors"])


def test_negative_feedback_lowers_the_score():
    model = OnlineMF(n_factors=8, seed=1)
    _planted(model, passes=2)
    before = model.predict_one("a0", "x3")
    model.learn_negative("a0", "x3", weight=1.0)
    after = model.predict_one("a0", "x3")
    assert after < before - 0.01
    model.learn_negative("a0", "x3", weight=0.0)
    assert model.predict_one("a0", "x3") == pytest.approx(after)


def test_dirty_items_track_changed_vectors():
    model = OnlineMF(n_factors=4, n_negatives=2, negatives="lru")
    for i in range(5):
        model.learn_negative("u", f"i{i}")
    model.clear_dirty()
    assert model.dirty_items() == []
    model.learn_one("u", "i4")
    dirty = set(model.dirty_items())
    assert "i4" in dirty and len(dirty) == 3  # the positive and its two negatives
    assert {"i0", "i1"} <= dirty  # lru: least recently engaged first
    model.clear_dirty(["i4"])
    assert set(model.dirty_items()) == dirty - {"i4"}


def test_lru_negatives_skip_recently_engaged_items():
    model = OnlineMF(n_factors=4, n_negatives=2, negatives="lru")
    for i in range(5):
        model.learn_negative("u", f"i{i}")  # queue, least recent first: i0 .. i4
    model.learn_one("u", "i0")  # negatives i1, i2; then i0 goes to the back as well
    model.clear_dirty()
    model.learn_one("u", "i4")
    assert set(model.dirty_items()) == {"i4", "i3", "i1"}  # not i0: it was just engaged with


def test_forget_user_erases_the_row_and_keeps_the_others():
    model = OnlineMF(n_factors=4)
    _planted(model, passes=1)
    last = model._user_ids[-1]
    kept = model.user_vector(last)
    assert model.forget_user("a0")
    assert "a0" not in model._user_row and not model.user_vector("a0").any()
    assert np.array_equal(model.user_vector(last), kept)
    assert not model._U[model.n_users].any()  # the freed row is zeroed, not left behind
    assert not model.forget_user("a0")


def test_index_vectors_reproduce_scores():
    model = OnlineMF(n_factors=8, seed=1)
    _planted(model, passes=1)
    items = ["x0", "y5", "x9"]
    via_index = model.index_vectors(items) @ model.query_vector("b2")
    assert np.allclose(via_index, model.score_items("b2", items), atol=1e-5)


def test_invalid_options_are_rejected():
    with pytest.raises(ValueError):
        OnlineMF(negatives="nope")
    with pytest.raises(ValueError):
        OnlineMF(loss="hinge")


def test_item_similarity_is_the_cosine_with_the_weighted_mean_of_the_anchor_items():
    mf = OnlineMF(n_factors=4, seed=0)
    for u in range(5):
        for i in ("a", "b", "c"):
            mf.learn_one(f"u{u}", i)
    sims = mf.item_similarity(["a", "b", "unknown"], anchors=["a"], weights=[1.0])
    va, vb = mf.item_vector("a"), mf.item_vector("b")
    assert sims[0] == pytest.approx(1.0, abs=1e-5)
    assert sims[1] == pytest.approx(float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb))), abs=1e-5)
    assert sims[2] == 0.0
    assert not mf.item_similarity(["a"], anchors=["unknown"], weights=[1.0]).any()


def _stream(model: OnlineMF, n: int, seed: int) -> None:
    """A mix of every learn_* call, with hot users and items so steps share rows."""
    rng = np.random.default_rng(seed)
    for k in range(n):
        user, item = f"u{rng.integers(6)}", f"i{rng.integers(12)}"
        kind = k % 5
        if kind < 3:
            model.learn_one(user, item, weight=1.0 + kind)
        elif kind == 3:
            model.learn_negatives(user, [item, f"i{rng.integers(12)}", f"i{rng.integers(12)}"], 0.3)
        else:
            model.learn_negative(user, item, 0.5)


@pytest.mark.parametrize("params", [{}, {"negatives": "uniform"}, {"loss": "squared", "lr": 0.05}])
def test_deferred_steps_give_the_model_of_learning_one_event_at_a_time(params):
    one_by_one = OnlineMF(n_factors=8, seed=3, **params)
    batched = OnlineMF(n_factors=8, seed=3, **params)
    _stream(one_by_one, 400, seed=5)
    before = batched.to_state()
    with batched.deferred():
        _stream(batched, 400, seed=5)
        # reads inside the block see the vectors from before it (new rows: their initial vectors)
        assert np.array_equal(batched._V[: len(before["item_ids"])], before["item_factors"])
    a, b = one_by_one.to_state(), batched.to_state()
    assert a["user_ids"] == b["user_ids"] and a["item_ids"] == b["item_ids"]
    for name in ("user_factors", "item_factors", "item_bias"):
        assert np.allclose(a[name], b[name], atol=1e-5), name
    assert set(one_by_one.dirty_items()) == set(batched.dirty_items())


def test_forget_user_inside_a_deferred_block_applies_the_queue_first():
    one_by_one, batched = OnlineMF(n_factors=4, seed=1), OnlineMF(n_factors=4, seed=1)
    for model, block in ((one_by_one, None), (batched, batched.deferred())):
        if block is not None:
            block.__enter__()
        for u in ("a", "b", "c"):
            model.learn_one(u, "x")
        model.forget_user("a")  # moves user c's row into a's
        model.learn_one("c", "y")
        if block is not None:
            block.__exit__(None, None, None)
    assert np.allclose(one_by_one.user_vector("c"), batched.user_vector("c"), atol=1e-6)
    assert np.allclose(one_by_one.user_vector("b"), batched.user_vector("b"), atol=1e-6)
    assert not batched.knows_user("a")


def test_new_rows_are_small_normal_vectors_that_differ_by_id_and_seed():
    model = OnlineMF(n_factors=16, init_scale=0.1, seed=2)
    for i in range(3000):
        model.learn_negative("u", f"item{i}", weight=0.0)  # weight 0: creates the row, learns nothing
    V = model._V[: model.n_items]
    assert abs(float(V.mean())) < 0.005 and abs(float(V.std()) - 0.1) < 0.005
    assert len({v.tobytes() for v in V}) == len(V)
    other = OnlineMF(n_factors=16, init_scale=0.1, seed=3)
    other.learn_negative("u", "item0", weight=0.0)
    assert not np.allclose(other.item_vector("item0"), model.item_vector("item0"))

