"""The prequential protocol: test-then-train, every event learned, exclusions, sampling."""

from __future__ import annotations

import math

import pytest

from freshrec.evaluation import metrics as mx
from freshrec.evaluation.methods import make_method
from freshrec.evaluation.prequential import (evaluate_parallel, evaluate_specs, limit_interactions, merge_results,
                                             run_prequential, scan_stream)
from freshrec.settings import Settings
from freshrec.streams.datasets import load_dataset

SYNTH = "synthetic:users=50,items=100,events=2000"


def synthetic_events() -> list[dict]:
    return list(load_dataset(SYNTH))


class FutureOracle:
    """Has memorised the whole stream: recommends the user's next item after what it was taught.

    In a test-then-train run the next item is exactly the test event's item (HitRate 1.0). Were
    the event learned before the test, it would predict the item after it and miss.
    """

    name = "oracle"

    def __init__(self, events: list[dict]) -> None:
        self.seq: dict[str, list[str]] = {}
        self.taught: dict[str, int] = {}
        for e in events:
            if e["type"] in ("click", "conversion", "rating"):
                self.seq.setdefault(e["user_id"], []).append(e["item_id"])

    def learn_one(self, event: dict) -> None:
        if event["type"] in ("click", "conversion", "rating"):
            self.taught[event["user_id"]] = self.taught.get(event["user_id"], 0) + 1

    def recommend_one(self, user_id, k, exclude):
        seq = self.seq.get(user_id, [])
        future = [i for i in seq[self.taught.get(user_id, 0):] if i not in exclude]
        return future[:1]


class Echo:
    """Recommends the last item it learned for the user: only ever right if it saw the test event."""

    name = "echo"

    def __init__(self) -> None:
        self.last: dict[str, str] = {}

    def learn_one(self, event: dict) -> None:
        if event["type"] in ("click", "conversion", "rating"):
            self.last[event["user_id"]] = event["item_id"]

    def recommend_one(self, user_id, k, exclude):
        item = self.last.get(user_id)
        return [] if item is None else [item]


class Spy:
    """Records the order of calls."""

    name = "spy"

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def learn_one(self, event: dict) -> None:
        self.calls.append(("learn", event["event_id"]))

    def recommend_one(self, user_id, k, exclude):
        self.calls.append(("recommend", (user_id, frozenset(exclude))))
        return list(exclude) + ["x"] * 20  # misbehaves: returns excluded items and too many


def ranked(result, name):
    return next(m for m in result.methods if m.name == name)


def test_memorised_future_scores_one_and_echo_scores_zero_so_order_is_test_then_train():
    events = synthetic_events()
    res = run_prequential(events, [FutureOracle(events), Echo()], k=10)
    assert res.stream.tests > 400
    assert mx.hit_rate(ranked(res, "oracle").ranks, 10) == 1.0
    # Echo can only be right about an item it already learned, which is excluded (a repeat)
    assert mx.hit_rate(ranked(res, "echo").ranks, 10) == 0.0


def test_the_same_methods_under_train_then_test_would_flip():
    """Control: if the loop learned first (simulated by feeding each event before the test), the
    oracle would miss and echo would hit, so the assertions above do detect the order."""
    events = [e for e in synthetic_events() if e["type"] in ("click", "rating", "conversion")]
    oracle, echo = FutureOracle(events), Echo()
    hits_o = hits_e = n = 0
    seen: dict[str, set] = {}
    for e in events:
        if e["item_id"] in seen.get(e["user_id"], set()):
            continue
        oracle.learn_one(e)
        echo.learn_one(e)
        n += 1
        hits_o += e["item_id"] in oracle.recommend_one(e["user_id"], 10, set())
        hits_e += e["item_id"] in echo.recommend_one(e["user_id"], 10, set())
        seen.setdefault(e["user_id"], set()).add(e["item_id"])
    assert hits_e == n and hits_o < n / 2


@pytest.mark.parametrize("sample_every", [1, 3])
def test_every_event_is_learned_once_in_order_and_tests_come_before_learning(sample_every):
    events = synthetic_events()[:700]
    spy = Spy()
    res = run_prequential(events, [spy], k=5, sample_every=sample_every)
    learned = [c[1] for c in spy.calls if c[0] == "learn"]
    assert learned == [e["event_id"] for e in events]  # all events, catalogue included, in order
    # each recommend call is immediately followed by learning the tested event
    history: dict[str, set] = {}
    pos = {e["event_id"]: e for e in events}
    for i, (kind, payload) in enumerate(spy.calls):
        if kind == "recommend":
            nxt = pos[spy.calls[i + 1][1]]
            user, exclude = payload
            assert nxt["user_id"] == user
            assert nxt["item_id"] not in exclude  # the test item is never in the exclusion set
            assert exclude == frozenset(history.get(user, set()))  # exactly the earlier engagements
        else:
            e = pos[payload]
            if e["type"] in ("click", "rating", "conversion"):
                history.setdefault(e["user_id"], set()).add(e["item_id"])
    st = res.stream
    assert st.tests == math.ceil(st.testable / sample_every)
    assert st.positives == st.testable + st.repeats
    # the evaluator dropped the excluded items and cut the list to k
    spy_res = ranked(res, "spy")
    assert spy_res.violations > 0 and all(r == 0 for r in spy_res.ranks)


def test_cold_start_users_are_tested():
    events = synthetic_events()
    res = run_prequential(events, [Echo()], k=10)
    engaged = {e["user_id"] for e in events if e["type"] in ("click", "rating", "conversion")}
    assert res.stream.cold_tests == len(engaged) == sum(res.test_cold) > 0  # each user's first positive


def test_real_methods_on_synthetic_data():
    res = evaluate_specs(SYNTH, ["freshrec:refresh_every=200", "freshrec:refresh_every=200,model=covis",
                                 "popularity", "covis20", "funkmf", "item-ctr"], k=10, settings=Settings())
    st = res.stream
    assert st.impressions == st.impressions_scored > 0
    by = {m.name.partition("(")[0]: m for m in res.methods}
    by["freshrec"] = res.methods[0]
    by["freshrec-covis"] = res.methods[1]
    for m in res.methods:
        assert len(m.ranks) == st.tests and m.violations == 0
        assert m.can_score and len(m.click_labels) == len(m.click_scores) > 0
    # the planted preferences are learnable: co-visitation beats popularity
    assert mx.hit_rate(by["covis20"].ranks, 10) > mx.hit_rate(by["popularity"].ranks, 10)
    assert mx.hit_rate(by["freshrec"].ranks, 10) > mx.hit_rate(by["popularity"].ranks, 10)
    assert mx.hit_rate(by["freshrec-covis"].ranks, 10) > mx.hit_rate(by["popularity"].ranks, 10)
    # cross-check: the counting baseline's click model (item CTR in the pipeline) equals the
    # independent item-ctr; the learning model's click model uses the planted user preferences
    assert by["freshrec-covis"].click_scores == pytest.approx(by["item-ctr"].click_scores)
    auc = {name: mx.auc(m.click_labels, m.click_scores) for name, m in by.items()}
    assert auc["freshrec"] > auc["item-ctr"] > 0.5, auc


def test_parallel_run_gives_the_same_numbers():
    specs = ["popularity", "covis20", "item-ctr"]
    one = evaluate_specs(SYNTH, specs, limit=800, settings=Settings())
    two = evaluate_parallel(SYNTH, specs, 2, limit=800, settings=Settings())
    assert [m.name for m in two.methods] == specs
    for a, b in zip(one.methods, two.methods):
        assert a.ranks == b.ranks and a.click_scores == b.click_scores
    assert merge_results([one]).methods == one.methods


def test_limit_counts_interactions_only():
    events = synthetic_events()
    limited = list(limit_interactions(events, 10))
    sc = scan_stream(limited)
    assert sc.interactions == 10 and sc.catalogue == 100
    assert len(limited) == 110
    assert sc.labels  # request_id -> clicked items


def test_methods_do_not_share_state():
    events = synthetic_events()[:800]
    alone = run_prequential(events, [make_method("popularity")])
    together = run_prequential(events, [make_method("popularity"), make_method("covis20")])
    assert alone.methods[0].ranks == together.methods[0].ranks
