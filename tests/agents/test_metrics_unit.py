"""WorkerMetrics without a broker: what /metrics renders, readiness, and the dashboard's names."""

from __future__ import annotations

import json
import re
from pathlib import Path

from freshrec.agents.observability import WorkerMetrics

ROOT = Path(__file__).resolve().parents[2]


def _metrics() -> WorkerMetrics:
    m = WorkerMetrics("stream", "app")
    m.update({"counters": {"events:click": 5, "deadletter:not_json": 2, "recomputes": 3},
              "lag": {"t.interactions": {"0": 7}}, "users": 4, "items": 9, "index_items": 8,
              "content_items": 9, "pending_users": 0, "checkpoint_version": 2, "events_per_s": 1.5,
              "stream_time_ms": 1, "model": "learning-v1", "redis_errors": 1,
              "rollout": {"revision": 3, "status": "running", "reason": "", "arms": {
                  "champion": {"model": "learning-v1", "lists": 10, "errors": 0, "impressions": 100, "clicks": 20,
                               "ctr": 0.2, "hitrate": 0.5, "share": 0.8, "mode": "serve",
                               "logloss": 0.31, "auc": 0.71},
                  "challenger": {"model": "rnd-v1", "lists": 3, "errors": 1, "impressions": 30, "clicks": 1,
                                 "ctr": 1 / 30, "hitrate": None, "share": 0.2, "mode": "canary"}}},
              "drift": {"psi": {"mf": 0.02, "prediction": 0.4}, "windows": 5}})
    m.freshness.observe(0.2)
    m.publish_latency.observe(0.001)
    return m


def test_rendered_metrics_carry_the_snapshot():
    text = _metrics().render().decode()
    assert 'freshrec_events_total{app_id="app",engine="stream",type="click"} 5.0' in text
    assert 'freshrec_deadletter_total{app_id="app",engine="stream",reason="not_json"} 2.0' in text
    assert 'freshrec_consumer_lag{app_id="app",engine="stream",partition="0",topic="t.interactions"} 7.0' in text
    assert 'freshrec_freshness_seconds_count 1.0' in text
    assert 'freshrec_redis_errors_total{app_id="app",engine="stream"} 1.0' in text


def test_ready_only_when_recovered_and_both_services_answer():
    m = _metrics()
    assert m.health()[0] and not m.readiness()[0]
    m.recovered, m.kafka_ok = True, True
    ok, parts = m.readiness()
    assert not ok and parts["redis"] is False
    m.redis_ok = True
    assert m.readiness()[0]


def test_per_arm_and_drift_metrics_are_labelled_by_arm_and_model():
    text = _metrics().render().decode()
    assert 'freshrec_arm_ctr{app_id="app",arm="champion",engine="stream",model="learning-v1"} 0.2' in text
    assert 'freshrec_arm_impressions_total{app_id="app",arm="challenger",engine="stream",model="rnd-v1"} 30.0' in text
    assert 'freshrec_arm_errors_total{app_id="app",arm="challenger",engine="stream",model="rnd-v1"} 1.0' in text
    assert 'arm="challenger",engine="stream",model="rnd-v1"} 0.2' in text  # its share
    assert "freshrec_arm_hitrate_at_10" in text and 'model="rnd-v1"} None' not in text
    assert 'freshrec_rollout_revision{app_id="app",engine="stream"} 3.0' in text
    assert 'freshrec_arm_click_auc{app_id="app",arm="champion",engine="stream",model="learning-v1"} 0.71' in text
    assert 'freshrec_drift_psi{app_id="app",engine="stream",feature="prediction"} 0.4' in text


def test_every_metric_the_dashboard_queries_is_exported():
    text = _metrics().render().decode()
    exported = set(re.findall(r"^(freshrec_[a-z_]+)", text, flags=re.M))
    dash = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "freshrec.json").read_text())
    queried = {name for p in dash["panels"] for t in p["targets"]
               for name in re.findall(r"freshrec_[a-z_]+", t["expr"])}
    assert queried and queried <= exported, queried - exported


def test_the_kafka_probe_reports_a_broker_that_does_not_answer_off_the_loop():
    """The probe thread marks Kafka down when nothing answers (a real client on a closed port),
    and stops when asked. /ready with a live broker is tested on the real worker."""
    import socket
    import time

    from confluent_kafka import Consumer

    from freshrec.agents.stream_worker import KafkaProbe

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    consumer = Consumer({"bootstrap.servers": f"127.0.0.1:{port}", "group.id": "probe-test",
                         "log_level": 0, "socket.connection.setup.timeout.ms": 1000})
    m = _metrics()
    m.kafka_ok = True
    probe = KafkaProbe(consumer, "t.interactions", m, interval_s=0.1).start()
    try:
        deadline = time.monotonic() + 10
        while m.kafka_ok and time.monotonic() < deadline:
            time.sleep(0.05)
        assert m.kafka_ok is False
    finally:
        t0 = time.monotonic()
        probe.stop()
        assert time.monotonic() - t0 < 5 and not probe._thread.is_alive()
        consumer.close()


def test_the_event_rate_is_the_last_intervals_however_often_it_is_read():
    from freshrec.agents.observability import RateMeter

    now = [100.0]
    meter = RateMeter(clock=lambda: now[0])
    now[0] = 102.0
    assert meter.tick(10_000) == 5000.0
    assert meter.rate == 5000.0 and meter.rate == 5000.0  # reads start no interval
    assert meter.tick(10_000) == 5000.0  # no time passed: the last interval's rate stands
    now[0] = 103.0
    assert meter.tick(10_500) == 500.0 and meter.rate == 500.0


def test_quick_lists_and_ranked_freshness_have_their_own_metrics():
    from freshrec.state.publisher import Updates

    m = _metrics()
    m.update({**m._snap, "counters": {**m._snap["counters"], "quick_lists": 4}})
    m.observe_freshness(Updates(freshness_ms=[120, 300], ranked_freshness_ms=[4000]))
    text = m.render().decode()
    assert 'freshrec_quick_lists_total{app_id="app",engine="stream"} 4.0' in text
    assert 'freshrec_freshness_seconds_count 3.0' in text  # the fixture's sample and these two
    assert 'freshrec_ranked_freshness_seconds_count 1.0' in text
    assert 'freshrec_ranked_freshness_seconds_bucket{le="5.0"} 1.0' in text
