"""What a worker shows operators: Prometheus ``/metrics``, ``/health`` and ``/ready`` over HTTP.

The worker loop owns all state and never takes a lock for metrics: once a second it hands a
plain snapshot (counters, lag, sizes) to :meth:`WorkerMetrics.update`, and scrapes read the last
snapshot from the HTTP thread. Histograms (freshness, publish latency) are prometheus_client's
own, which are thread-safe, and are observed where the values arise.

* ``/metrics``: Prometheus text format (see the README for the metric names).
* ``/health``: 200 while the consume loop is alive (a heartbeat within ``HEALTH_STALE_S``).
* ``/ready``: 200 once recovery is done and Kafka and Redis answered the last checks; otherwise
  503 with a JSON body saying which part is not ready.
"""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from freshrec.streams.schema import REASONS

log = logging.getLogger("freshrec.worker")
DEADLETTER_REASONS = (*REASONS, "wrong_topic")

HEALTH_STALE_S = 30.0
FRESHNESS_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
PUBLISH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)

# pipeline counters exported as plain counters: counter name -> (metric name, help)
PLAIN_COUNTERS = {
    "duplicates": ("freshrec_duplicates", "Events already applied (same event_id), skipped"),
    "recomputes": ("freshrec_recomputes", "User lists recomputed"),
    "recompute_deferred": ("freshrec_recompute_deferred", "Lists deferred to the next flush by the time budget"),
    "quick_lists": ("freshrec_quick_lists", "Quick lists published (last ranked list patched) for users waiting for a ranked one"),
    "published": ("freshrec_published_keys", "Redis keys written"),
    "checkpoints": ("freshrec_checkpoints", "Checkpoints written"),
    "checkpoint_errors": ("freshrec_checkpoint_errors", "Background checkpoints that failed (the previous one stays)"),
    "batches_behind": ("freshrec_batches_behind", "Consume batches that came back full: the worker was behind "
                       "(click model sampled, smaller list budget)"),
    "impressions_learned": ("freshrec_impressions_learned", "Impressions learned by the click model"),
    "indexed": ("freshrec_index_upserts", "Item vectors re-indexed in the HNSW index"),
}


class RateMeter:
    """Events per second over the last interval: :meth:`tick` with the running total once per
    interval (the loop's metrics update); :attr:`rate` is that interval's value, read as often as
    wanted. (A rate measured since the last read gave 0.0 in every stats line written in the same
    loop pass as a metrics update.)"""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._mark = (clock(), 0)
        self.rate = 0.0

    def tick(self, total: int) -> float:
        now = self.clock()
        t_prev, n_prev = self._mark
        if now > t_prev:
            self.rate = round((total - n_prev) / (now - t_prev), 1)
            self._mark = (now, total)
        return self.rate


class WorkerMetrics:
    """The metrics of one worker, and its readiness (a prometheus_client custom collector)."""

    def __init__(self, engine: str, app_id: str) -> None:
        self.registry = CollectorRegistry()
        self.engine, self.app_id = engine, app_id
        self.freshness = Histogram("freshrec_freshness_seconds",
                                   "A user's newest event time to the publish of the first list reflecting it (ranked or quick)",
                                   buckets=FRESHNESS_BUCKETS, registry=self.registry)
        self.ranked_freshness = Histogram("freshrec_ranked_freshness_seconds",
                                          "A user's newest event time to the publish of a ranked list reflecting it",
                                          buckets=FRESHNESS_BUCKETS, registry=self.registry)
        self.publish_latency = Histogram("freshrec_publish_seconds", "Duration of one pipelined Redis write",
                                         buckets=PUBLISH_BUCKETS, registry=self.registry)
        self._snap: dict[str, Any] = {}
        self.recovered = False
        self.kafka_ok = False
        self.redis_ok = False
        self.heartbeat = time.monotonic()
        self.registry.register(self)

    # ------------------------------------------------------------------ fed by the worker loop
    def update(self, snapshot: dict[str, Any]) -> None:
        """Replace the snapshot scrapes read (called by the loop, about once a second)."""
        self._snap = snapshot
        self.heartbeat = time.monotonic()

    def observe_freshness(self, updates: Any) -> None:
        """The freshness of a published flush's lists (:class:`~freshrec.state.publisher.Updates`)."""
        for histogram, values in ((self.freshness, updates.freshness_ms),
                                  (self.ranked_freshness, updates.ranked_freshness_ms)):
            for ms in values:
                histogram.observe(ms / 1000.0)

    def beat(self) -> None:
        self.heartbeat = time.monotonic()

    # ------------------------------------------------------------------ health
    def health(self) -> tuple[bool, dict[str, Any]]:
        age = time.monotonic() - self.heartbeat
        return age < HEALTH_STALE_S, {"loop_heartbeat_age_s": round(age, 2)}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        alive, info = self.health()
        parts = {"loop": alive, "recovered": self.recovered, "kafka": self.kafka_ok, "redis": self.redis_ok}
        return all(parts.values()), {**parts, **info}

    # ------------------------------------------------------------------ prometheus collector
    def describe(self) -> list:
        return []  # names are dynamic; skip the registry's duplicate check at registration

    def collect(self) -> Iterator[Metric]:
        s = self._snap
        counters: dict[str, int] = s.get("counters", {})
        labels = ["engine", "app_id"]
        base = [self.engine, self.app_id]
        events = CounterMetricFamily("freshrec_events", "Events applied, by type", labels=labels + ["type"])
        dlq = CounterMetricFamily("freshrec_deadletter", "Events dead-lettered, by reason", labels=labels + ["reason"])
        dead = dict.fromkeys(DEADLETTER_REASONS, 0)  # every reason from the start: 0 is a value too
        for name, n in counters.items():
            kind, _, what = name.partition(":")
            if kind == "events" and what:
                events.add_metric(base + [what], n)
            elif kind == "deadletter" and what:
                dead[what] = n
        for reason, n in dead.items():
            dlq.add_metric(base + [reason], n)
        yield events
        yield dlq
        for key, (metric, text) in PLAIN_COUNTERS.items():
            c = CounterMetricFamily(metric, text, labels=labels)
            c.add_metric(base, counters.get(key, 0))
            yield c
        c = CounterMetricFamily("freshrec_redis_errors", "Failed Redis publishes (lists requeued)", labels=labels)
        c.add_metric(base, s.get("redis_errors", 0))
        yield c
        lag = GaugeMetricFamily("freshrec_consumer_lag", "Events not yet processed, per topic and partition",
                                labels=labels + ["topic", "partition"])
        for topic, parts in s.get("lag", {}).items():
            for partition, n in parts.items():
                lag.add_metric(base + [topic, str(partition)], n)
        yield lag
        for name, (metric, text) in {
            "users": ("freshrec_users", "Users with state on this worker"),
            "items": ("freshrec_items", "Items with statistics on this worker"),
            "index_items": ("freshrec_index_items", "Live items in the MF HNSW index"),
            "content_items": ("freshrec_content_index_items", "Items in the content index"),
            "pending_users": ("freshrec_pending_users", "Users whose list waits for recompute"),
            "checkpoint_version": ("freshrec_checkpoint_version", "Newest checkpoint written or loaded"),
            "events_per_s": ("freshrec_events_per_second", "Events applied per second (last interval)"),
            "stream_time_ms": ("freshrec_stream_time_ms", "Newest event time seen (epoch ms)"),
        }.items():
            if s.get(name) is not None:
                g = GaugeMetricFamily(metric, text, labels=labels)
                g.add_metric(base, float(s[name]))
                yield g
        ready, _ = self.readiness()
        g = GaugeMetricFamily("freshrec_ready", "1 when recovered and Kafka and Redis answer", labels=labels)
        g.add_metric(base, 1.0 if ready else 0.0)
        yield g
        model = GaugeMetricFamily("freshrec_model_info", "The model this worker serves", labels=labels + ["model"])
        model.add_metric(base + [str(s.get("model", ""))], 1.0)
        yield model
        yield from self._rollout_metrics(s.get("rollout"), labels, base)
        yield from self._drift_metrics(s.get("drift"), labels, base)

    @staticmethod
    def _rollout_metrics(r: dict[str, Any] | None, labels: list[str], base: list[str]) -> Iterator[Metric]:
        """Per-arm online metrics (see freshrec.state.rollout), labelled by arm and model."""
        if not r:
            return
        g = GaugeMetricFamily("freshrec_rollout_revision", "Rollout config revision applied", labels=labels)
        g.add_metric(base, float(r["revision"]))
        yield g
        arm_labels = labels + ["arm", "model"]
        for key, kind, metric, text in (
            ("lists", "counter", "freshrec_arm_lists", "Lists computed by the arm (shadow: not served)"),
            ("errors", "counter", "freshrec_arm_errors", "List computations of the arm that raised"),
            ("impressions", "counter", "freshrec_arm_impressions", "Shown items of the arm's lists (by request_id)"),
            ("clicks", "counter", "freshrec_arm_clicks", "Clicks on the arm's lists (by request_id)"),
            ("ctr", "gauge", "freshrec_arm_ctr", "Clicks per shown item of the arm's lists"),
            ("hitrate", "gauge", "freshrec_arm_hitrate_at_10",
             "Share of the users' next positive interactions found in the arm's last top 10"),
            ("share", "gauge", "freshrec_arm_share", "Share of users assigned to the arm"),
            ("logloss", "gauge", "freshrec_arm_click_logloss",
             "Logloss of the arm's click model on impressions, predicted before learning them (last 20k)"),
            ("auc", "gauge", "freshrec_arm_click_auc",
             "ROC AUC of the arm's click model on impressions, predicted before learning them (last 20k)"),
        ):
            fam = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(metric, text, labels=arm_labels)
            for arm, d in r["arms"].items():
                if d.get(key) is not None:
                    fam.add_metric(base + [arm, str(d["model"])], float(d[key]))
            yield fam

    @staticmethod
    def _drift_metrics(d: dict[str, Any] | None, labels: list[str], base: list[str]) -> Iterator[Metric]:
        """Population stability of the click model's inputs and predictions (freshrec.state.drift)."""
        if not d:
            return
        g = GaugeMetricFamily("freshrec_drift_psi", "PSI of the last window against the reference window",
                              labels=labels + ["feature"])
        for feature, psi in (d.get("psi") or {}).items():
            g.add_metric(base + [feature], float(psi))
        yield g
        w = GaugeMetricFamily("freshrec_drift_windows", "Drift windows closed", labels=labels)
        w.add_metric(base, float(d.get("windows", 0)))
        yield w

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Handler(BaseHTTPRequestHandler):
    metrics: WorkerMetrics  # set on the subclass made by serve()

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, self.metrics.render(), CONTENT_TYPE_LATEST)
        elif path in ("/health", "/ready"):
            ok, info = self.metrics.health() if path == "/health" else self.metrics.readiness()
            self._send(200 if ok else 503, orjson.dumps({"ok": ok, **info}), "application/json")
        else:
            self._send(404, b'{"error": "try /metrics, /health or /ready"}', "application/json")

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet access log
        log.debug("http %s", format % args)


def serve(metrics: WorkerMetrics, host: str, port: int) -> ThreadingHTTPServer:
    """Serve the endpoints on a daemon thread; returns the server (``server_address`` has the port)."""
    handler = type("MetricsHandler", (_Handler,), {"metrics": metrics})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="freshrec-http", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics (also /health, /ready)", host, server.server_address[1])
    return server
