"""Rollout in process: arms by stable hash, per-arm CTR by request_id, guardrails, live changes.

A closed loop without a broker: simulated users (tests of streams/closedloop.py's world) read
the lists the Pipeline published, are shown them, click by their planted preferences, and those
events go back into the Pipeline, as they would through Kafka and Redis.
"""

import orjson
import pytest

from freshrec.settings import Settings
from freshrec.state.pipeline import Pipeline, Record
from freshrec.state.registry import (CHALLENGER, CHAMPION, Guardrails, ModelSpec, RegistryError, RolloutConfig,
                                     arm_of, parse_params)
from freshrec.state.rollout import parse_request_id, request_id
from freshrec.streams.closedloop import ClosedLoopUsers
from freshrec.streams.datasets.synthetic import make_world

T0 = 1_700_000_000_000
CHAMP = ModelSpec("learning", 1, "learning")


class Loop:
    """Pipeline + simulated frontend/users; ``redis`` holds the published documents."""

    def __init__(self, rollout=None, n_users=200, n_items=2000, seed=1):
        self.now = T0
        self.world = make_world(n_users=n_users, n_items=n_items, n_categories=10, seed=seed)
        self.p = Pipeline(Settings(recompute_interval_ms=0, recompute_budget_ms=0, trending_interval_ms=500, index_refresh_ms=500,
                                   click_window_s=30.0),
                          clock=lambda: self.now, rollout=rollout)
        self.users = ClosedLoopUsers(self.world, seed=seed)
        self.redis: dict[str, dict] = {}
        self.offsets = {"i": 0, "c": 0}
        self.p.process_catalogue([Record("t.catalogue", 0, n, orjson.dumps(e))
                                  for n, e in enumerate(self.users.catalogue(self.now))])

    def flush(self):
        updates = self.p.collect_updates()
        for key, value in updates.sets:
            self.redis[key] = orjson.loads(value)
        for key in updates.deletes:
            self.redis.pop(key, None)
        return updates

    def sessions(self, n, flush_every=5, until=None):
        for k in range(n):
            user = self.users.pick_user()
            events = self.users.react(user, self.redis.get(self.p.keys.recs(user)), self.now)
            records = []
            for e in events:
                records.append(Record("t.interactions", 0, self.offsets["i"], orjson.dumps(e)))
                self.offsets["i"] += 1
            result = self.p.process_interactions(records)
            assert not result.rejected, result.rejected
            self.now += 200
            if k % flush_every == 0:
                self.flush()
                if until is not None and until():
                    return k + 1
        self.flush()
        return n

    def docs(self):
        return [d for k, d in self.redis.items() if k.startswith(self.p.keys.recs(""))]


def canary(challenger, share=0.2, mode="canary", revision=1, **guard):
    return RolloutConfig(CHAMP, challenger, mode, share, Guardrails(**guard), revision=revision, status="running")


def test_arm_assignment_is_a_stable_share_of_users():
    cfg = canary(ModelSpec("rnd", 1, "random"), share=0.2)
    users = [f"u{i}" for i in range(5000)]
    arms = [arm_of(u, cfg) for u in users]
    assert arms == [arm_of(u, cfg) for u in users]  # same answer every time (and on every worker)
    assert 0.17 < arms.count(CHALLENGER) / len(users) < 0.23
    wider = [arm_of(u, canary(ModelSpec("rnd", 1, "random"), share=0.5)) for u in users]
    assert all(w == CHALLENGER for a, w in zip(arms, wider) if a == CHALLENGER)  # widening keeps its users


def test_specs_and_configs_are_validated_with_clear_errors():
    with pytest.raises(RegistryError, match="kafka_brokers"):
        ModelSpec("x", 1, "learning", {"kafka_brokers": "evil:9092"}).validate()
    with pytest.raises(RegistryError, match="kind"):
        ModelSpec("x", 1, "magic").validate()
    with pytest.raises(RegistryError, match="share"):
        canary(ModelSpec("rnd", 1, "random"), share=1.5).validate()
    with pytest.raises(RegistryError, match="explore_share"):
        parse_params(["explore_share=lots"])
    assert parse_params(["explore_share=0.2", "ann_candidates=50"]) == {"explore_share": 0.2, "ann_candidates": 50}
    cfg = canary(ModelSpec("rnd", 1, "random"))
    assert RolloutConfig.from_json(cfg.to_json()) == cfg


def test_request_ids_name_the_arm_and_model():
    rid = request_id(CHALLENGER, "ranker-v3", T0, 7)
    assert parse_request_id(rid) == (CHALLENGER, "ranker-v3")
    assert parse_request_id("syn:0:r5") is None and parse_request_id(None) is None


def test_a_random_challenger_is_rolled_back_and_its_users_get_champion_lists_again():
    loop = Loop()
    loop.sessions(1500)  # the champion learns the planted preferences first
    cfg = canary(ModelSpec("rnd", 1, "random"), share=0.2, min_impressions=300)
    loop.p.apply_rollout(cfg)  # live, as the worker does when the revision in Redis moves
    assert loop.p.rollout.challenger is not None
    n = loop.sessions(4000, until=lambda: loop.p.rollout.config.challenger is None)
    assert loop.p.rollout.config.challenger is None, loop.p.rollout.snapshot()
    audit = loop.p.audit[-1]
    assert audit["action"] == "rollback" and audit["actor"] == "guardrail" and "CTR" in audit["reason"]
    ch = audit["arms"][CHALLENGER]
    assert ch["impressions"] < 3000, ch  # caught within a bounded number of shown items
    assert ch["ctr"] < 0.5 * audit["arms"][CHAMPION]["ctr"]
    assert loop.p.rollout_changed.status == "rolled_back" and loop.p.rollout_changed.revision == 2
    assert audit["republished_users"] > 0
    while loop.p.pending_users:
        loop.flush()
    assert n < 4000
    assert not [d for d in loop.docs() if d["arm"] == CHALLENGER]  # every one of its users is back
    assert {d["model"] for d in loop.docs()} == {"learning-v1"}


def test_a_good_challenger_survives_the_guardrails_and_is_promoted_live():
    loop = Loop()
    loop.sessions(800)
    good = ModelSpec("ranker", 2, "learning", {"explore_share": 0.05})
    loop.p.apply_rollout(canary(good, share=0.3, min_impressions=300))
    loop.sessions(1500)
    snap = loop.p.rollout.snapshot()
    assert loop.p.rollout.config.challenger == good, snap
    assert snap["arms"][CHALLENGER]["impressions"] > 300 and snap["arms"][CHALLENGER]["ctr"] > 0
    served = {d["arm"] for d in loop.docs()}
    assert served == {CHAMPION, CHALLENGER}
    challenger_model = loop.p.rollout.challenger
    promoted = loop.p.rollout.config.with_changes(champion=good, challenger=None, mode=None, share=0.0,
                                                  status="promoted")
    republished = loop.p.apply_rollout(promoted)
    assert republished >= len(loop.docs()) - 1
    assert loop.p.recommender is challenger_model  # it keeps what it learned: no cold start
    while loop.p.pending_users:  # republished within the per-flush time budget
        loop.flush()
    assert {(d["model"], d["arm"]) for d in loop.docs()} == {("ranker-v2", CHAMPION)}


def test_a_shadow_challenger_is_scored_but_never_served():
    loop = Loop(rollout=canary(ModelSpec("shadowy", 1, "learning", {"explore_share": 0.0}), share=1.0,
                               mode="shadow"))
    loop.sessions(800)
    assert loop.docs() and all(d["arm"] == CHAMPION and d["model"] == "learning-v1" for d in loop.docs())
    snap = loop.p.rollout.snapshot()["arms"]
    assert snap[CHALLENGER]["lists"] > 100 and snap[CHALLENGER]["impressions"] == 0
    assert snap[CHALLENGER]["hit_tests"] > 100 and snap[CHALLENGER]["hitrate"] is not None
    assert snap[CHAMPION]["hitrate"] is not None
    # both learning arms' click models are scored on impressions before learning them
    assert 0.5 < snap[CHAMPION]["auc"] <= 1.0 and snap[CHAMPION]["logloss"] > 0, snap[CHAMPION]
    assert snap[CHALLENGER]["auc"] is not None and snap[CHALLENGER]["click_pairs"] > 1000


def test_a_share_change_moves_users_between_arms():
    loop = Loop(rollout=canary(ModelSpec("rnd", 1, "random"), share=0.1, min_impressions=10**9))
    loop.sessions(600)
    before = {d["user_id"] for d in loop.docs() if d["arm"] == CHALLENGER}
    moved = loop.p.apply_rollout(loop.p.rollout.config.with_changes(share=0.6))
    assert moved > 0
    while loop.p.pending_users:
        loop.flush()
    after = {d["user_id"] for d in loop.docs() if d["arm"] == CHALLENGER}
    assert before < after
    assert all(arm_of(u, loop.p.rollout.config) == CHALLENGER for u in after)


def test_a_challenger_that_raises_is_rolled_back_on_errors_and_users_still_get_lists():
    loop = Loop()
    loop.sessions(200)
    loop.p.apply_rollout(canary(ModelSpec("rnd", 1, "random"), share=0.5, min_lists=20, min_impressions=10**9))

    def broken(*_a, **_k):
        raise RuntimeError("bug in the challenger")

    loop.p.rollout.challenger.publish_one = broken
    loop.sessions(300)
    assert loop.p.rollout.config.challenger is None
    assert "error rate" in loop.p.audit[-1]["reason"]
    assert all(d["arm"] == CHAMPION for d in loop.docs())
