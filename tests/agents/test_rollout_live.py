"""Rollout on a real worker, broker and Redis: canary rollback, live promotion, shadow, drift.

Traffic is closed-loop (freshrec.streams.closedloop): simulated users read their lists from Redis
and click by planted preferences, so a model's CTR reflects its lists. Changes are made with the
CLI, as an operator would, while the worker keeps running (one process, never restarted).
"""

from __future__ import annotations

import time

import orjson
import pytest
from click.testing import CliRunner

from freshrec.cli import main
from freshrec.localinfra._proc import free_port
from freshrec.state.publisher import RedisKeys
from freshrec.state.rollout_store import RolloutStore
from freshrec.status import gather, render
from freshrec.streams.audit import read_audit
from freshrec.streams.closedloop import ClosedLoopUsers, run_closed_loop
from freshrec.streams.datasets.synthetic import make_world

from .conftest import DATASETS, http_get, prom_sample as _sample, wait_for

pytestmark = pytest.mark.integration


def _metrics(port: int) -> str:
    return http_get(f"http://127.0.0.1:{port}/metrics")[1].decode()


def _ready(port: int) -> bool:
    return http_get(f"http://127.0.0.1:{port}/ready")[0] == 200


def _cli(settings, *args: str) -> str:
    result = CliRunner().invoke(main, list(args), env=settings.to_env(), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _docs(client, settings) -> list[dict]:
    keys = list(client.scan_iter(match=RedisKeys(settings.redis_prefix).recs("*"), count=1000))
    return [orjson.loads(v) for v in client.mget(keys) if v] if keys else []


@pytest.fixture
def live(worker, worker_settings):
    port = free_port()
    s = worker.settings = worker_settings.replace(web_port=port, click_window_s=30.0)
    worker.start()
    wait_for(lambda: _ready(port), 90, "/ready", worker)
    return worker, s, port


def test_a_random_canary_is_rolled_back_by_its_ctr_then_a_good_one_is_promoted_live(live, redis_client):
    worker, s, port = live
    users = ClosedLoopUsers(make_world(n_users=200, n_items=2000, seed=3), seed=3)
    run_closed_loop(s, users, 3000, rate=400)  # the champion learns the users' tastes
    assert "registered rnd-v1" in _cli(s, "model", "register", "rnd", "--kind", "random")
    _cli(s, "rollout", "start", "rnd", "--mode", "canary", "--share", "0.2", "--min-impressions", "300")
    store = RolloutStore(redis_client, RedisKeys(s.redis_prefix))

    summary = run_closed_loop(s, users, 20000, rate=400, catalogue=False,
                              stop=lambda: store.load(s).status == "rolled_back")
    cfg = store.load(s)
    assert cfg.status == "rolled_back" and cfg.challenger is None, (cfg, summary)
    assert "CTR" in cfg.reason
    assert summary["sessions"] < 20000
    seen_ctr = {arm.split(":")[0]: v["ctr"] for arm, v in summary["arms"].items() if v["shown"] > 200}
    assert seen_ctr["challenger"] < seen_ctr["champion"], summary  # what the users themselves got

    audit = wait_for(lambda: [r for r in read_audit(s) if r["action"] == "rollback"] and read_audit(s),
                     30, "the rollback on the audit topic", worker)
    actions = [r["action"] for r in audit]
    assert actions[:2] == ["register", "canary"] and "applied" in actions, actions
    rb = next(r for r in audit if r["action"] == "rollback")
    assert rb["actor"] == "guardrail" and "CTR" in rb["reason"] and rb["revision"] == cfg.revision
    assert rb["arms"]["challenger"]["impressions"] < 6000  # rolled back within a bounded exposure
    print(f"\nrollback after {rb['arms']['challenger']['impressions']} challenger shown items "
          f"({summary['sessions']} sessions): {rb['reason']}; CTR the users saw {seen_ctr}")
    wait_for(lambda: not [d for d in _docs(redis_client, s) if d["arm"] == "challenger"], 30,
             "every canary user back on champion lists", worker)
    # /metrics serves a snapshot the loop refreshes once a second: wait for one taken after the rollback
    def rolled_back_metrics() -> str | None:
        text = _metrics(port)
        return text if _sample(text, "freshrec_rollout_revision") == cfg.revision else None

    text = wait_for(rolled_back_metrics, 10, f"rollout revision {cfg.revision} in /metrics", worker)
    assert _sample(text, "freshrec_arm_ctr", arm="champion", model="learning-v1") > 0.1

    # a good challenger: a learning variant, at 30%; then promoted from the CLI, no restart
    pid = worker.procs[-1].pid
    _cli(s, "model", "register", "ranker", "--set", "explore_share=0.05")
    _cli(s, "rollout", "start", "ranker", "--share", "0.3", "--min-impressions", "300")
    run_closed_loop(s, users, 3000, rate=400, catalogue=False)
    cfg = store.load(s)
    assert cfg.challenger is not None and cfg.challenger.label == "ranker-v1", cfg
    wait_for(lambda: (_sample(_metrics(port), "freshrec_arm_impressions_total", arm="challenger",
                              model="ranker-v1") or 0) > 300, 30, "the challenger's shown items in /metrics", worker)
    assert "share" in _cli(s, "rollout", "share", "0.5")
    wait_for(lambda: _sample(_metrics(port), "freshrec_arm_share", arm="challenger", model="ranker-v1") == 0.5, 30,
             "the new share applied live", worker)
    st = gather(s)
    assert st["worker"]["rollout"]["arms"]["challenger"]["model"] == "ranker-v1"
    assert "ranker-v1" in render(st) and "challenger" in render(st)
    assert "promote" in _cli(s, "rollout", "promote")
    wait_for(lambda: _sample(_metrics(port), "freshrec_model_info", model="ranker-v1") == 1.0, 30,
             "the worker serving the promoted model", worker)
    run_closed_loop(s, users, 500, rate=400, catalogue=False)
    wait_for(lambda: {d["model"] for d in _docs(redis_client, s)} == {"ranker-v1"}, 60,
             "every list republished by the promoted model", worker)
    assert worker.procs[-1].pid == pid and worker.procs[-1].poll() is None  # never restarted
    wait_for(lambda: [r["action"] for r in read_audit(s)][-4:] == ["share", "applied", "promote", "applied"], 30,
             "share and promote, each applied, on the audit topic", worker)


def test_a_shadow_model_is_scored_but_never_served(live, redis_client):
    worker, s, port = live
    users = ClosedLoopUsers(make_world(n_users=200, n_items=2000, seed=4), seed=4)
    run_closed_loop(s, users, 1000, rate=400)
    _cli(s, "model", "register", "quiet", "--set", "explore_share=0.0")
    _cli(s, "rollout", "start", "quiet", "--mode", "shadow", "--share", "1.0")
    run_closed_loop(s, users, 3000, rate=400, catalogue=False)
    docs = _docs(redis_client, s)
    assert docs and all(d["arm"] == "champion" and d["model"] == "learning-v1" for d in docs)

    def shadow_scored():
        st = gather(s)
        arms = (st["worker"] or {}).get("rollout", {}).get("arms", {})
        ch = arms.get("challenger")
        return st if ch and ch["lists"] > 100 and ch["hit_tests"] > 50 else None

    st = wait_for(shadow_scored, 30, "the shadow arm's offline metrics in the worker's stats", worker)
    ch = st["worker"]["rollout"]["arms"]["challenger"]
    assert ch["model"] == "quiet-v1" and ch["mode"] == "shadow" and ch["impressions"] == 0
    assert ch["hitrate"] is not None
    champ = st["worker"]["rollout"]["arms"]["champion"]
    print(f"\nshadow quiet-v1: {ch['lists']} lists, HitRate@10 {ch['hitrate']} over {ch['hit_tests']} tests "
          f"(champion {champ.get('hitrate')}), 0 served")
    assert _sample(_metrics(port), "freshrec_arm_hitrate_at_10", arm="challenger", model="quiet-v1") is not None
    _cli(s, "rollout", "rollback", "--reason", "shadow run finished")
    wait_for(lambda: "challenger" not in ((gather(s)["worker"] or {}).get("rollout") or {}).get("arms", {"challenger": 1}),
             30, "the shadow arm gone after a manual rollback", worker)
    rb = [r for r in read_audit(s) if r["action"] == "rollback"][-1]
    assert rb["actor"].startswith("cli") and rb["reason"] == "shadow run finished"



def _replay(s, spec: str, limit: int, rate: float | None = None) -> None:
    pace = ["--rate", str(rate)] if rate else []
    result = CliRunner().invoke(main, ["replay", "--dataset", spec, "--limit", str(limit), "--no-progress", *pace],
                                env=s.to_env())
    assert result.exit_code == 0, result.output


def test_drift_spikes_when_the_replayed_data_set_switches_mid_stream(worker, worker_settings):
    port = free_port()
    # steady traffic first: wall-clock event times (item ages barely move during the test) and
    # a short click window (the click model learns from the start, not all at once later)
    s = worker.settings = worker_settings.replace(web_port=port, drift_window=2000, click_window_s=10.0)
    worker.start()
    # paced well below the worker's capacity: behind the stream a worker makes few lists (its
    # list budget), so drift windows were few and each spanned much of the stream, and they
    # drifted as much as the switch itself (PSI 2.5-11 between synthetic windows)
    _replay(s, "synthetic:users=300,items=500,events=12000,realtime=1", 20000, rate=600)
    worker.wait_caught_up()
    time.sleep(6)  # the next stats document
    drift = gather(s)["worker"]["drift"]
    assert _sample(_metrics(port), "freshrec_drift_psi", feature="prediction") is not None
    windows_before, before = drift["windows"], sorted(v for _, v in drift["recent"][-5:])
    _replay(s, f"movielens:{DATASETS / 'movielens-100k'}", 20000, rate=1000)
    worker.wait_caught_up()

    def shifted():
        d = (gather(s)["worker"] or {}).get("drift", {})
        new = d.get("windows", 0) - windows_before
        return [v for _, v in d["recent"][-new:]] if new >= 2 else None  # the first may straddle the switch

    after = wait_for(shifted, 60, "drift windows after the data set switch", worker)
    print(f"\ndrift PSI, last 5 windows before the switch {before}, windows after it {after}")
    assert len(before) == 5 and max(after) > 1.0 and max(after) > 3 * before[2], (drift["recent"], after)
