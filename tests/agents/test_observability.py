"""Operator view of a real stream worker: /metrics, /health, /ready and `freshrec status`."""

from __future__ import annotations

import re

import orjson
import pytest

from freshrec.localinfra._proc import free_port
from freshrec.status import gather, render
from freshrec.streams.producer import EventProducer
from freshrec.streams.schema import make_event

from .conftest import http_get as _get, prom_sample as _sample, wait_for

pytestmark = pytest.mark.integration


def test_metrics_health_ready_and_status_follow_the_worker(worker, worker_settings):
    port = free_port()
    s = worker.settings = worker_settings.replace(engine="stream", model="learning", web_port=port,
                                                  checkpoint_interval_s=2.0)
    base = f"http://127.0.0.1:{port}"
    worker.start()
    wait_for(lambda: _get(base + "/ready")[0] == 200, 90, "/ready", worker)
    code, body = _get(base + "/health")
    assert code == 200 and orjson.loads(body)["ok"] is True

    with EventProducer(s) as producer:
        for u in range(50):
            for i in range(4):
                producer.send(make_event("click", user_id=f"u{u}", item_id=f"i{(u + i) % 20}"))
        producer.send_raw(s.interactions_topic, b"{not json", key=b"u1")
        producer.flush(10)

    def scraped():
        text = _get(base + "/metrics")[1].decode()
        clicks = _sample(text, "freshrec_events_total", type="click")
        return text if clicks == 200 and (_sample(text, "freshrec_freshness_seconds_count") or 0) > 0 else None

    text = wait_for(scraped, 60, "metrics with every click and published lists", worker)
    assert _sample(text, "freshrec_deadletter_total", reason="not_json") == 1, text
    assert _sample(text, "freshrec_consumer_lag", topic=s.interactions_topic) is not None
    assert _sample(text, "freshrec_ready") == 1.0
    assert _sample(text, "freshrec_index_items") is not None
    assert re.search(r'freshrec_freshness_seconds_bucket\{.*le="\+Inf"\}', text)

    # status from the broker and the worker's stats
    def status_caught_up():
        g = gather(s)
        return g if g["worker"] and g["total_lag"] == 0 and g["worker"]["events"].get("click") == 200 else None

    st = wait_for(status_caught_up, 60, "status with the worker's stats and no lag", worker)
    assert {p["topic"] for p in st["partitions"]} == {s.interactions_topic, s.catalogue_topic}
    assert len([p for p in st["partitions"] if p["topic"] == s.interactions_topic]) == s.partitions
    assert st["worker"]["deadletter"] == {"not_json": 1} and not st["worker"]["stale"]
    assert "total lag" in render(st)

    # stop the worker: lag grows while events arrive and shows per partition without any worker
    worker.stop()
    with EventProducer(s) as producer:
        for u in range(40):
            producer.send(make_event("click", user_id=f"v{u}", item_id="i1"))
        producer.flush(10)
    st = gather(s)
    assert st["total_lag"] == 40
    assert sum(1 for p in st["partitions"] if p["lag"] > 0) >= 2  # 40 users spread over 4 partitions
    # restart: the lag drains
    worker.start()
    wait_for(lambda: gather(s)["total_lag"] == 0, 90, "the lag to drain after the restart", worker)


def test_the_faust_engine_serves_the_same_metrics_on_its_web_server(worker, worker_settings):
    port = free_port()
    s = worker.settings = worker_settings.replace(engine="faust", model="covis", web_port=port)
    worker.start()
    with EventProducer(s) as producer:
        for u in range(10):
            producer.send(make_event("click", user_id=f"u{u}", item_id=f"i{u % 3}"))
        producer.flush(10)

    def scraped():
        code, body = _get(f"http://127.0.0.1:{port}/metrics")
        text = body.decode() if code == 200 else ""
        return text if _sample(text, "freshrec_events_total", engine="faust", type="click") == 10 else None

    text = wait_for(scraped, 120, "faust /metrics with every click", worker)
    assert (_sample(text, "freshrec_freshness_seconds_count") or 0) > 0
    assert _sample(text, "freshrec_arm_lists_total", arm="champion", model="covis-v1") > 0
    code, body = wait_for(lambda: (lambda r: r if r[0] == 200 else None)(_get(f"http://127.0.0.1:{port}/ready")),
                          60, "faust /ready", worker)
    assert orjson.loads(body)["recovered"] is True
