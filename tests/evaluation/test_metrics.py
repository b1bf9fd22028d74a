"""Each metric against values computed by hand."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from freshrec.evaluation import metrics as mx


def test_rank_of_is_one_based_and_zero_when_absent_or_past_k():
    recs = ["a", "b", "c"]
    assert mx.rank_of("a", recs) == 1
    assert mx.rank_of("c", recs) == 3
    assert mx.rank_of("z", recs) == 0
    assert mx.rank_of("c", recs, k=2) == 0


def test_hit_rate_counts_ranks_within_k():
    # ranks 1 and 10 are hits at k=10, 11 and 0 (miss) are not
    assert mx.hit_rate([1, 0, 11, 10], k=10) == 0.5
    assert mx.hit_rate([1, 0, 11, 10], k=1) == 0.25
    assert mx.hit_rate([], k=10) == 0.0


def test_ndcg_with_one_relevant_item():
    # (1/log2(2) + 1/log2(4) + 0) / 3 = (1 + 0.5) / 3
    assert mx.ndcg([1, 3, 0], k=10) == pytest.approx(0.5)
    # rank 7: 1/log2(8) = 1/3; past k counts 0
    assert mx.ndcg([7], k=10) == pytest.approx(1 / 3)
    assert mx.ndcg([7], k=5) == 0.0


def test_mrr_within_k():
    # (1 + 1/4 + 0 + 1/2) / 4
    assert mx.mrr([1, 4, 0, 2], k=10) == pytest.approx(0.4375)
    assert mx.mrr([1, 4, 0, 2], k=3) == pytest.approx((1 + 0.5) / 4)


def test_ranking_metrics_reject_bad_input():
    with pytest.raises(ValueError):
        mx.hit_rate([-1], k=10)
    with pytest.raises(ValueError):
        mx.ndcg([1], k=0)


def test_catalogue_coverage():
    assert mx.catalogue_coverage({"a", "b"}, 4) == 0.5
    assert mx.catalogue_coverage(["a", "b", "a"], ["a", "b", "c", "d"]) == 0.5
    assert mx.catalogue_coverage([], 0) == 0.0


def test_intra_list_diversity_by_hand():
    cats = {"a": {"x"}, "b": {"x", "y"}, "c": {"z"}}
    # d has no categories: skipped. Pairs: J(a,b) = 1/2, J(a,c) = 0, J(b,c) = 0 -> mean 1/6
    assert mx.intra_list_diversity(["a", "b", "c", "d"], cats) == pytest.approx(5 / 6)
    # identical categories: no diversity
    assert mx.intra_list_diversity(["a", "a"], cats) == pytest.approx(0.0)
    # fewer than two categorised items: undefined, not 0
    assert mx.intra_list_diversity(["a", "d"], cats) is None


def test_intra_list_diversity_bit_masks_agree_with_sets():
    rng = random.Random(3)
    labels = [f"g{i}" for i in range(12)]
    sets = {f"i{n}": set(rng.sample(labels, rng.randint(1, 4))) for n in range(30)}
    masks = {item: sum(1 << labels.index(g) for g in s) for item, s in sets.items()}
    for _ in range(20):
        items = rng.sample(sorted(sets), 10)
        assert mx.intra_list_diversity(items, masks) == pytest.approx(mx.intra_list_diversity(items, sets))


def test_novelty_by_hand():
    # p(a) = (3+1)/(3+2) = 0.8, p(b) = (0+1)/5 = 0.2
    expected = (-math.log2(0.8) - math.log2(0.2)) / 2
    assert mx.novelty(["a", "b"], {"a": 3}, total=3, n_items=2) == pytest.approx(expected)
    assert mx.novelty([], {"a": 3}, total=3, n_items=2) is None
    # the very first list (nothing seen yet) is finite
    assert mx.novelty(["a"], {}, total=0, n_items=0) == 0.0


def test_auc_by_hand_with_ties():
    # positives 0.9, 0.4; negatives 0.1, 0.4: pairs 1 + 1 + 1 + 0.5 (tie) = 3.5 of 4
    assert mx.auc([1, 0, 1, 0], [0.9, 0.1, 0.4, 0.4]) == pytest.approx(0.875)
    assert mx.auc([1, 0], [0.2, 0.8]) == 0.0
    assert mx.auc([1, 1], [0.2, 0.8]) is None


def test_auc_equals_pairwise_count():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = rng.integers(0, 10, 200).astype(float)  # many ties
    pos, neg = s[y == 1], s[y == 0]
    pairs = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    assert mx.auc(y, s) == pytest.approx(pairs / (len(pos) * len(neg)))


def test_log_loss_by_hand():
    expected = -(math.log(0.8) + math.log(0.6)) / 2
    assert mx.log_loss([1, 0], [0.8, 0.4]) == pytest.approx(expected)
    assert mx.log_loss([1], [0.0]) == pytest.approx(-math.log(1e-15))  # clipped, finite
    assert mx.log_loss([], []) is None


def test_rolling_mean():
    assert mx.rolling_mean([1, 0, 1, 1], 2).tolist() == [1.0, 0.5, 0.5, 1.0]
    assert mx.rolling_mean([1, 0, 1], 10).tolist() == pytest.approx([1.0, 0.5, 2 / 3])
