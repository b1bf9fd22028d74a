"""`freshrec status` rendering without services: arms, their metrics, drift, the configured rollout."""

from freshrec.status import render


def test_status_shows_each_arm_with_its_online_metrics_and_drift():
    status = {
        "app_id": "app", "kafka": "k:9092", "errors": [], "total_lag": 0,
        "partitions": [{"topic": "t.interactions", "partition": 0, "committed": 5, "end": 5, "lag": 0}],
        "worker": {
            "engine": "stream", "model": "learning-v1", "stats_age_s": 1.0, "stale": False, "events_per_s": 10.0,
            "freshness_ms": {"p50": 300, "p99": 900, "n": 10}, "events": {"click": 3}, "deadletter": {},
            "duplicates": 0, "redis_errors": 0, "checkpoint_version": 2, "users": 3, "items": 4,
            "rollout": {"revision": 4, "status": "running", "reason": "canary rnd-v1 at 20%", "arms": {
                "champion": {"model": "learning-v1", "mode": "serve", "share": 0.8, "lists": 90, "errors": 0,
                             "impressions": 900, "clicks": 180, "ctr": 0.2, "hitrate": 0.41, "freshness_p99_ms": 800},
                "challenger": {"model": "rnd-v1", "mode": "canary", "share": 0.2, "lists": 20, "errors": 1,
                               "impressions": 200, "clicks": 8, "ctr": 0.04, "hitrate": None,
                               "freshness_p99_ms": None}}},
            "drift": {"psi": {"mf": 0.03, "popularity": 0.4}, "windows": 6, "window_rows": 5000},
        },
        "rollout": {"champion": {"name": "learning", "version": 1}, "challenger": {"name": "rnd", "version": 1},
                    "mode": "canary", "share": 0.2, "revision": 4, "status": "running"},
    }
    text = render(status)
    lines = text.splitlines()
    champion = next(line for line in lines if line.startswith("champion "))
    challenger = next(line for line in lines if line.startswith("challenger "))
    assert "learning-v1" in champion and "0.2000" in champion and "0.4100" in champion and "80%" in champion
    assert "rnd-v1" in challenger and "canary" in challenger and "0.0400" in challenger and "20%" in challenger
    assert "rollout revision 4 (running: canary rnd-v1 at 20%)" in text
    assert "popularity 0.400" in text and "shifted" in text
    assert "configured: champion learning-v1, challenger rnd-v1 canary 20% (revision 4, running)" in text
    # the rate is the worker's last stats interval, which a finished replay leaves at 0: say so
    assert "throughput 10.0 events/s over the last stats interval (0 when idle)" in text


def test_a_printed_list_says_whether_it_is_ranked_or_quick():
    from freshrec.cli import format_recs

    doc = {"user_id": "u", "model": "learning-v1", "generated_at": 2, "event_ts": 1, "tier": "quick",
           "items": [{"item_id": "a", "score": 0.5}]}
    assert "tier=quick" in format_recs(doc).splitlines()[0]
    del doc["tier"]  # a document written before tiers existed
    assert "tier=ranked" in format_recs(doc).splitlines()[0]
