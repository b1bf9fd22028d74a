"""The Faust app: topics, changelog-backed tables and agents. Wiring only.

Each agent takes a batch of raw records (``take_events``), hands it to
:class:`freshrec.state.pipeline.Pipeline`, marks the rows the batch changed as dirty (they are
written to the tables' changelogs before the next offset commit, see
:mod:`freshrec.agents.changelog`; explicit partition = the source partition, so tables stay
co-partitioned with the input), dead-letters rejected records, and flushes coalesced Redis updates
when due. Row watermarks make the replays after a crash harmless.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
import orjson
import redis.asyncio as aioredis

from freshrec.agents import faust_recovery
from freshrec.agents.changelog import ChangelogWriter, flush_rows_before_commits
from freshrec.agents.observability import WorkerMetrics
from freshrec.agents.publishing import PublishLog
from freshrec.settings import Settings, state_dir
from freshrec.state.pipeline import Pipeline, Record
from freshrec.state.publisher import publish
from freshrec.streams.deadletter import deadletter_record

log = logging.getLogger("freshrec.worker")

MAX_MESSAGE_BYTES = 8 * 1024 * 1024


class WorkerRuntime:
    """What the agents share: the pipeline, the Redis client, and flush serialisation."""

    def __init__(self, settings: Settings, pipeline: Pipeline, redis_client: Any) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.redis = redis_client
        self.flush_lock = asyncio.Lock()
        self.needs_rebuild = True
        self.log = PublishLog(pipeline)
        self.metrics: WorkerMetrics | None = None

    async def flush(self, force: bool = False) -> None:
        """Recompute what is due and write it to Redis in one pipeline."""
        async with self.flush_lock:
            updates = self.pipeline.collect_updates(force=force)
            if not updates:
                return
            try:
                await publish(self.redis, updates, self.settings.recs_ttl_s)
            except Exception as exc:  # noqa: BLE001 - Redis down: keep consuming
                self.log.failed(updates, exc)
                if self.metrics is not None:
                    self.metrics.redis_ok = False
                return
            self.log.published(updates)
            if self.metrics is not None:
                self.metrics.redis_ok = True
                self.metrics.observe_freshness(updates)

    def stats(self) -> dict:
        return self.log.stats(engine="faust")


def _records(events: list) -> list[Record]:
    return [Record(e.message.topic, e.message.partition, e.message.offset, e.message.value,
                   e.message.key, int(e.message.timestamp * 1000) if e.message.timestamp else None)
            for e in events]


def create_app(settings: Settings) -> faust.App:
    """Build the Faust app for ``settings`` (topics must exist: see ``streams.topics``)."""
    faust_recovery.apply()  # no events lost or stalled around the post-recovery seek (see there)
    datadir = state_dir() / "worker" / settings.app_id
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{b.strip()}" for b in settings.kafka_brokers.split(",")],
        store="memory://",
        autodiscover=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        web_enabled=settings.web_port > 0,
        web_port=settings.web_port or 6066,
        web_bind="127.0.0.1",
        datadir=str(datadir),
        producer_max_request_size=MAX_MESSAGE_BYTES,
        consumer_max_fetch_size=MAX_MESSAGE_BYTES,
        # A full stream buffer makes Faust pause partitions; its flow control has known races
        # that can stall a consumer (faust-streaming #88, #236, #175). A large buffer of small
        # events keeps a worker catching up on a backlog away from that path.
        stream_buffer_maxsize=max(100_000, settings.batch_max * 2),
        broker_commit_interval=1.0,
    )
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    interactions = app.topic(settings.interactions_topic, **raw)
    catalogue = app.topic(settings.catalogue_topic, **raw)
    deadletter = app.topic(settings.deadletter_topic, **raw)

    def table(name: str) -> faust.Table:
        return app.Table(name, partitions=settings.partitions,
                         schema=faust.Schema(key_serializer="json", value_serializer="json"))

    users, items, covis, catalogue_rows = table("users"), table("items"), table("covis"), table("catalogue")
    changelog = ChangelogWriter(settings.kafka_brokers, {"users": users, "items": items, "covis": covis,
                                                         "catalogue": catalogue_rows})
    flush_rows_before_commits(app, changelog)
    runtime_box: dict[str, WorkerRuntime] = {}
    metrics = WorkerMetrics("faust", settings.app_id)  # served by Faust's own web server

    def runtime() -> WorkerRuntime:
        rt = runtime_box.get("rt")
        if rt is None:
            pipeline = Pipeline(settings, users.data, items.data, covis.data, catalogue_rows.data)
            rt = runtime_box["rt"] = WorkerRuntime(settings, pipeline, aioredis.from_url(settings.redis_url))
            rt.metrics = metrics
        if rt.needs_rebuild and app.tables.recovery.completed.is_set():
            rt.pipeline.rebuild()
            rt.needs_rebuild = False
            log.info("state rebuilt: %d users, %d items", len(users.data), len(rt.pipeline.features.item_stats))
        return rt

    @app.on_partitions_assigned.connect
    async def on_assigned(app: faust.App, assigned: Any, **kwargs: Any) -> None:
        if "rt" in runtime_box:
            runtime_box["rt"].needs_rebuild = True

    async def dead_letter(rejected: list) -> None:
        for rej in rejected:
            r = rej.record
            value, headers = deadletter_record(r.value or b"", rej.reason, rej.detail, r.topic,
                                               r.partition, r.offset)
            await deadletter.send(key=r.key, value=value, headers=headers)
            log.warning("dead-lettered %s[%d]@%d: %s: %s", r.topic, r.partition, r.offset,
                        rej.reason, rej.detail)

    batch_within = settings.batch_within_ms / 1000.0

    last_offset: dict[tuple[str, int], int] = {}

    def check_continuity(events: list) -> None:
        """Log any hole or step back in a partition's offsets as the agent receives them: on a
        topic written without transactions either means Faust skipped or re-ordered events (the
        kill -9 count test of this engine lost a few events now and then before the fixes in
        :mod:`freshrec.agents.faust_recovery`; this keeps watching)."""
        for e in events:
            m = e.message
            key = (m.topic, m.partition)
            prev = last_offset.get(key)
            if prev is not None and m.offset != prev + 1:
                log.warning("offset continuity: %s[%d] offset %d after %d", m.topic, m.partition, m.offset, prev)
            last_offset[key] = m.offset if prev is None else max(prev, m.offset)

    @app.agent(interactions, name="interactions")
    async def process_interactions(stream: faust.StreamT) -> None:
        async for events in stream.take_events(settings.batch_max, within=batch_within):
            check_continuity(events)
            rt = runtime()
            result = rt.pipeline.process_interactions(_records(events))
            changelog.mark("users", result.dirty.users)
            changelog.mark("items", result.dirty.items)
            changelog.mark("covis", result.dirty.covis)
            await dead_letter(result.rejected)
            if rt.pipeline.due():
                await rt.flush()

    @app.agent(catalogue, name="catalogue")
    async def process_catalogue(stream: faust.StreamT) -> None:
        async for events in stream.take_events(settings.batch_max, within=batch_within):
            rt = runtime()
            result = rt.pipeline.process_catalogue(_records(events))
            changelog.mark("catalogue", result.catalogue_dirty)
            await dead_letter(result.rejected)

    @app.timer(interval=max(0.02, settings.recompute_interval_ms / 4000.0))
    async def flush_timer() -> None:
        if not app.tables.recovery.completed.is_set():
            return
        rt = runtime()
        if not rt.needs_rebuild and rt.pipeline.due():
            await rt.flush()

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        return web.bytes(metrics.render(), content_type="text/plain")  # aiohttp refuses a charset here

    @app.page("/ready")
    async def ready_page(web: Any, request: Any) -> Any:
        ok, info = metrics.readiness()
        return web.json({"ok": ok, **info}, status=200 if ok else 503)

    @app.timer(interval=1.0)
    async def update_metrics() -> None:
        metrics.recovered = app.tables.recovery.completed.is_set()
        metrics.kafka_ok = metrics.recovered  # the consumer is assigned and recovered only with a broker
        if "rt" not in runtime_box:
            metrics.beat()
            return
        rt = runtime_box["rt"]
        p = rt.pipeline
        metrics.update({"counters": dict(p.counters), "redis_errors": rt.log.redis_errors,
                        "users": len(p.features.users), "items": len(p.features.item_stats),
                        "pending_users": len(p.pending_users), "stream_time_ms": p.features.stream_time_ms,
                        "model": p.model_name, "rollout": p.rollout.snapshot()})

    @app.timer(interval=5.0)
    async def report() -> None:
        if "rt" not in runtime_box:
            return
        rt = runtime_box["rt"]
        stats = rt.stats()
        try:
            await rt.redis.set(rt.pipeline.keys.worker_stats(settings.app_id), orjson.dumps(stats))
        except Exception:  # noqa: BLE001 - stats are best effort
            pass
        log.info("stats %s", orjson.dumps(stats).decode())

    return app


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Create the topics if missing, then run the worker until interrupted."""
    from freshrec.streams.topics import ensure_topics

    ensure_topics(settings)
    app = create_app(settings)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
