"""The stream engine: a confluent-kafka consumer loop around the same ``Pipeline``. Wiring only.

Why not Faust for the hot path: measured on this project's benchmark, a bare Faust agent that
only decodes reaches about 2% of the raw consume rate of the same topic (6.5k vs 336k events/s),
and the learning pipeline has to fit its work into what is left. This loop takes batches
straight from librdkafka (``Consumer.consume``), so per-event cost is the pipeline's own.

Exactly-once state without changelogs: the whole state (features, models, indices) is
checkpointed every ``FRESHREC_CHECKPOINT_INTERVAL_S`` with the offsets it reflects
(:mod:`freshrec.state.checkpoint`), so item-level features need no per-partition rows
(``Pipeline(partials=False)``: one write per impression and co-visitation pair, not two). A
restarted worker loads the newest checkpoint, seeks every
partition to the checkpoint's offset and replays only the tail, so every event is applied to
the state exactly once whatever the crash point. The consumer group's committed offsets are
written every second for lag monitoring only; recovery never reads them. Redis writes are
idempotent (whole lists, recomputed), and users pending publication are part of the checkpoint.
Dead letters of the replayed tail may be sent twice (at-least-once, like any Kafka producer
outside a transaction).

This engine assumes one worker per consumer group (it owns every partition). Partition moves
between several workers need per-partition state hand-over: the Faust engine (``--engine faust``,
features only, no learning) handles that through its changelog tables today.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from typing import Any

import orjson
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from freshrec.agents.observability import RateMeter, WorkerMetrics, serve
from freshrec.agents.publishing import PublishLog
from freshrec.settings import Settings, state_dir
from freshrec.state.ann import ItemIndex
from freshrec.state.checkpoint import BackgroundCheckpoint, CheckpointError, CheckpointStore
from freshrec.state.pipeline import Pipeline, Record
from freshrec.state.publisher import RedisKeys, publish_sync
from freshrec.state.registry import RolloutConfig
from freshrec.state.rollout_store import RolloutStore
from freshrec.streams.audit import audit_record, send_audit
from freshrec.streams.deadletter import deadletter_record

log = logging.getLogger("freshrec.worker")

MAX_MESSAGE_BYTES = 8 * 1024 * 1024
INDEX_FILE = "items.hnsw"
CATALOGUE_STALL_S = 5.0  # the catalogue gate opens when the catalogue's offsets did not move this long
SLOW_STEP_S = 0.5  # a batch or flush taking longer is logged (freshness p99 diagnostics)


CHECKPOINT_OVERLOAD_FACTOR = 4  # while overloaded, checkpoints come this many times less often


def checkpoint_due_s(settings: Settings, overloaded: bool) -> float:
    """Seconds between checkpoints: ``checkpoint_interval_s``, times CHECKPOINT_OVERLOAD_FACTOR
    while the worker is behind or lists wait. A checkpoint forks the process, and the parent pays
    for the pages it writes while the child lives (copy-on-write: lists ~30% slower for the 2-4 s
    a save takes, README session 15; a 5k events/s phase of the benchmark that met one fell
    behind for seconds). Under overload that time is taken from users' freshness; the price is a
    longer replay after a crash."""
    return settings.checkpoint_interval_s * (CHECKPOINT_OVERLOAD_FACTOR if overloaded else 1)


def is_behind(settings: Settings, n_messages: int, oldest_ms: int | None, now_ms: int) -> bool:
    """Whether the worker is behind the stream (it sheds load then, see ``Pipeline.set_behind``):
    its consume batch came back full, or the batch's oldest message waited more than
    ``behind_lag_ms`` since it was produced (its Kafka timestamp: send time unless a producer
    sets another). By fullness alone, one short batch ended the shedding while the messages
    still waiting were seconds old, and the full work that followed (every slate learned, four
    times the list budget) put the worker behind again."""
    if n_messages >= settings.batch_max:
        return True
    return oldest_ms is not None and settings.behind_lag_ms > 0 and now_ms - oldest_ms > settings.behind_lag_ms


class KafkaProbe:
    """Sets ``metrics.kafka_ok`` to whether the broker answers a metadata request for ``topic``,
    asked every ``interval_s`` from a daemon thread. On the consume loop the request took ~100 ms
    under a backlog (~2% of the loop's time) and up to its 2 s timeout with the broker down.
    librdkafka's handles are thread-safe; the probe stops before the consumer closes."""

    def __init__(self, consumer: Consumer, topic: str, metrics: WorkerMetrics, interval_s: float = 5.0) -> None:
        self.consumer, self.topic, self.metrics, self.interval_s = consumer, topic, metrics, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="freshrec-kafka-probe", daemon=True)

    def check(self) -> bool:
        try:
            self.consumer.list_topics(self.topic, timeout=2.0)
            ok = True
        except Exception:  # noqa: BLE001 - KafkaException when no broker answers
            ok = False
        self.metrics.kafka_ok = ok
        return ok

    def _run(self) -> None:
        while True:
            self.check()
            if self._stop.wait(self.interval_s):
                return

    def start(self) -> "KafkaProbe":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)


class CatalogueGate:
    """Interactions wait until the catalogue is read up to where it stood at assignment.

    Within a batch the catalogue is applied first, but across a backlog the consumer's fetches
    come partition by partition, and the catalogue's could come after most of the interactions:
    clicks on items whose category, text and content vector are not known yet. ``targets``: the
    catalogue partitions' high watermarks at assignment (those not read that far yet); the
    interaction partitions stay paused until each is reached, the catalogue offsets have not
    moved for ``stall_s`` (what is left is no data, e.g. transaction markers), or ``max_s``
    has passed."""

    def __init__(self, targets: dict[int, int], paused: list[TopicPartition], max_s: float,
                 stall_s: float = CATALOGUE_STALL_S, now: float | None = None) -> None:
        self.targets = dict(targets)
        self.paused = paused
        self.max_s = max_s
        self.stall_s = stall_s
        self.started = self.moved = time.monotonic() if now is None else now
        self._last: tuple[int, ...] | None = None

    def should_open(self, offsets: dict[int, int], now: float | None = None) -> str | None:
        """Why the interactions may go now (None: not yet): ``caught up``, ``stalled`` or
        ``timeout``. ``offsets``: the next catalogue offset to read, per partition."""
        now = time.monotonic() if now is None else now
        current = tuple(offsets.get(p, -1) for p in self.targets)
        if all(o >= high for o, high in zip(current, self.targets.values())):
            return "caught up"
        if current != self._last:
            self._last, self.moved = current, now
        if now - self.moved >= self.stall_s:
            return "stalled"
        if now - self.started >= self.max_s:
            return "timeout"
        return None


class StreamWorker:
    """Consume, apply, learn, publish, checkpoint: one loop (and a thread that probes Kafka)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
        self.rollouts = RolloutStore(self.redis, RedisKeys(settings.redis_prefix))
        # it owns every partition and checkpoints all of its state: no per-partition item rows
        self.pipeline = Pipeline(settings, rollout=self._initial_rollout(), partials=False)
        self.store = CheckpointStore(state_dir() / "checkpoints" / settings.app_id, keep=settings.checkpoint_keep)
        self.writer = BackgroundCheckpoint(self.store)
        self.topics = [settings.interactions_topic, settings.catalogue_topic]
        self.offsets: dict[str, dict[int, int]] = {t: {} for t in self.topics}  # next offset to read
        self.checkpoint_version = 0
        self.log = PublishLog(self.pipeline)
        self.metrics = WorkerMetrics("stream", settings.app_id)
        self.assigned: list[TopicPartition] = []
        self.gate: CatalogueGate | None = None  # interactions paused until the catalogue is read
        self.rate = RateMeter()
        self.stopping = False
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None

    # ------------------------------------------------------------------ rollout
    def _initial_rollout(self) -> RolloutConfig:
        try:
            return self.rollouts.load(self.settings)
        except (redis.RedisError, ValueError) as exc:
            log.warning("rollout config not readable (%s): serving FRESHREC_MODEL=%s until it is",
                        exc, self.settings.model)
            return RolloutConfig.default(self.settings)

    def poll_rollout(self) -> None:
        """Apply a newer rollout config from Redis (promote, rollback, share), live."""
        try:
            config = self.rollouts.load(self.settings)
        except (redis.RedisError, ValueError) as exc:
            log.debug("rollout config not readable: %s", exc)
            return
        current = self.pipeline.rollout.config
        if config.revision <= current.revision:
            return
        n = self.pipeline.apply_rollout(config)
        log.info("rollout revision %d applied (%s): %d users queued for a new list", config.revision,
                 config.reason or config.status, n)
        self.pipeline.audit.append(audit_record("applied", f"worker:{self.settings.app_id}",
                                                revision=config.revision, republished_users=n))

    def _sync_rollout(self) -> None:
        """Store a config the pipeline changed (a guardrail rollback) and send queued audit records."""
        p = self.pipeline
        if p.rollout_changed is not None:
            cfg = p.rollout_changed
            try:
                if not self.rollouts.save(cfg, cfg.revision - 1):
                    # an operator changed it meanwhile: theirs wins (the guardrails judge it afresh)
                    stored = self.rollouts.load(self.settings)
                    log.warning("rollout changed concurrently: applying stored revision %d instead of the "
                                "rollback", stored.revision)
                    p.apply_rollout(stored, force=True)
                p.rollout_changed = None
            except redis.RedisError as exc:
                log.warning("could not store the rolled-back rollout config (will retry): %s", exc)
        if p.audit and self.producer is not None:
            send_audit(self.settings, [{**rec, "worker": self.settings.app_id} for rec in p.audit], self.producer)
            p.audit.clear()
            self.producer.poll(0)

    # ------------------------------------------------------------------ recovery
    def recover(self) -> float:
        """Load the newest checkpoint (if any); returns the seconds it took."""
        t0 = time.perf_counter()
        loaded = self.store.load_latest()
        if loaded is None:
            log.info("no checkpoint: starting from the beginning of the topics")
            return 0.0
        info, state = loaded
        index_path = info.path / INDEX_FILE
        index = ItemIndex.load(index_path) if index_path.exists() else None
        self.pipeline.load_state(state, index)
        for topic, parts in info.offsets.items():
            self.offsets.setdefault(topic, {}).update(parts)
        self.checkpoint_version = info.version
        seconds = time.perf_counter() - t0
        log.info("recovered checkpoint v%d (%d bytes) in %.2fs: %d users, %d items; resuming at offsets %s",
                 info.version, info.state_bytes, seconds, len(self.pipeline.features.users),
                 len(self.pipeline.features.item_stats), info.offsets)
        return seconds

    def checkpoint(self, wait: bool = False) -> None:
        """Save state + offsets (dead letters flushed first, so none is lost behind an offset):
        in a forked child while the loop goes on (:class:`BackgroundCheckpoint`), or here and now
        with ``wait`` (at shutdown, after any save still running)."""
        self.reap_checkpoint(block=wait)
        if self.producer is not None:
            self.producer.flush(30)
        files = {}
        if self.pipeline.learning:
            files[INDEX_FILE] = self.pipeline.recommender.index.save
        meta = {"model": self.pipeline.model_name, "counters": dict(self.pipeline.counters)}
        if not wait:
            if not self.writer.start(self.pipeline.to_state, self.offsets, meta, files):
                log.info("checkpoint still being written: this one is skipped")
            return
        t0 = time.perf_counter()
        info = self.store.save(self.pipeline.to_state(), self.offsets, meta=meta, files=files)
        self._checkpointed(info, time.perf_counter() - t0)

    def reap_checkpoint(self, block: bool = False) -> None:
        """Take note of a background checkpoint that finished (a failed one is logged, counted
        and retried at the next interval: the previous checkpoint stays the newest)."""
        started = self.writer.started_at
        try:
            info = self.writer.poll(block=block)
        except CheckpointError as exc:
            self.pipeline.counters["checkpoint_errors"] += 1
            log.error("background checkpoint failed: %s", exc)
            return
        if info is not None:
            self._checkpointed(info, time.perf_counter() - started)

    def _checkpointed(self, info, seconds: float) -> None:
        self.checkpoint_version = info.version
        self.pipeline.counters["checkpoints"] += 1
        log.info("checkpoint v%d: %d bytes in %.2fs", info.version, info.state_bytes, seconds)

    # ------------------------------------------------------------------ kafka
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            tp.offset = self.offsets.get(tp.topic, {}).get(tp.partition, OFFSET_BEGINNING)
        consumer.assign(partitions)
        self.assigned = list(partitions)
        log.info("assigned %s", [(tp.topic, tp.partition, tp.offset) for tp in partitions])
        self.gate = self._catalogue_gate(consumer, partitions)

    def _catalogue_gate(self, consumer: Consumer, partitions: list[TopicPartition]) -> CatalogueGate | None:
        """Pause the interaction partitions while the catalogue has a backlog (:class:`CatalogueGate`)."""
        s = self.settings
        if s.catalogue_first_max_s <= 0:
            return None
        targets: dict[int, int] = {}
        waiting = 0  # catalogue events to read first
        for tp in partitions:
            if tp.topic != s.catalogue_topic:
                continue
            try:
                marks = consumer.get_watermark_offsets(tp, timeout=5.0, cached=False)
            except Exception as exc:  # noqa: BLE001 - the gate orders a backlog, it must never stop the worker
                marks = exc
            if not isinstance(marks, tuple):
                log.warning("catalogue first: no watermarks for partition %d (%s): not waiting for it", tp.partition, marks)
                continue
            low, high = marks
            start = tp.offset if tp.offset >= 0 else low
            if high > start:
                targets[tp.partition] = high
                waiting += high - start
        paused = [tp for tp in partitions if tp.topic == s.interactions_topic]
        if not targets or not paused:
            return None
        consumer.pause(paused)
        log.info("catalogue first: up to %d catalogue events to read before the interactions", waiting)
        return CatalogueGate(targets, paused, s.catalogue_first_max_s)

    def _open_gate(self) -> None:
        why = self.gate.should_open(self.offsets[self.settings.catalogue_topic])
        if why is None:
            return
        self.consumer.resume(self.gate.paused)
        log.info("catalogue first: interactions resumed (%s) after %.2fs", why, time.monotonic() - self.gate.started)
        self.gate = None

    def _commit(self) -> None:
        """Commit processed offsets for lag monitoring (recovery uses the checkpoint's)."""
        tps = [TopicPartition(t, p, o) for t, parts in self.offsets.items() for p, o in parts.items()]
        if tps and self.consumer is not None:
            try:
                self.consumer.commit(offsets=tps, asynchronous=True)
            except Exception as exc:  # noqa: BLE001 - monitoring only
                log.debug("offset commit failed: %s", exc)

    def _dead_letter(self, rejected: list) -> None:
        for rej in rejected:
            r = rej.record
            value, headers = deadletter_record(r.value or b"", rej.reason, rej.detail, r.topic,
                                               r.partition, r.offset)
            self.producer.produce(self.settings.deadletter_topic, key=r.key, value=value, headers=headers)
            log.warning("dead-lettered %s[%d]@%d: %s: %s", r.topic, r.partition, r.offset, rej.reason, rej.detail)
        self.producer.poll(0)

    # ------------------------------------------------------------------ loop
    def flush(self, force: bool = False) -> None:
        t_collect = time.perf_counter()
        updates = self.pipeline.collect_updates(force=force)
        spent = time.perf_counter() - t_collect
        if spent >= SLOW_STEP_S:  # what a freshness p99 is made of: say where the time went
            log.info("slow flush: %.2fs for %d lists (and %d quick lists) and %d similar lists", spent, updates.recs,
                     len(updates.quick), len(updates.similar))
        if not updates:
            return
        t0 = time.perf_counter()
        try:
            publish_sync(self.redis, updates, self.settings.recs_ttl_s)
        except redis.RedisError as exc:
            self.metrics.redis_ok = False
            self.log.failed(updates, exc)
            return
        self.metrics.redis_ok = True
        self.metrics.publish_latency.observe(time.perf_counter() - t0)
        self.metrics.observe_freshness(updates)
        self.log.published(updates)

    def stats(self) -> dict[str, Any]:
        return self.log.stats(engine="stream", checkpoint_version=self.checkpoint_version, behind=self.pipeline.behind,
                              rollout=self.pipeline.rollout.snapshot(), drift=self.pipeline.drift.snapshot(),
                              lag=self.lag(), events_per_s=self.rate.rate, ts=int(time.time() * 1000))

    def lag(self) -> dict[str, dict[str, int]]:
        """Events not yet processed per assigned partition, from the high watermarks the consumer
        last fetched (no broker round trip)."""
        out: dict[str, dict[str, int]] = {}  # partition as str: the stats go out as JSON
        if self.consumer is None:
            return out
        for tp in self.assigned:
            try:
                low, high = self.consumer.get_watermark_offsets(tp, cached=True)
            except Exception:  # noqa: BLE001 - not fetched yet
                continue
            if high < 0:
                continue
            pos = self.offsets.get(tp.topic, {}).get(tp.partition, low if low >= 0 else 0)
            out.setdefault(tp.topic, {})[str(tp.partition)] = max(0, high - pos)
        return out

    def _update_metrics(self) -> None:
        p = self.pipeline
        rec = p.recommender
        self.metrics.update({
            "counters": dict(p.counters), "redis_errors": self.log.redis_errors, "lag": self.lag(),
            "users": len(p.features.users), "items": len(p.features.item_stats),
            "index_items": len(rec.index) if p.learning else None,
            "content_items": len(rec.content) if p.learning else None,
            "pending_users": len(p.pending_users), "checkpoint_version": self.checkpoint_version,
            "events_per_s": self.rate.tick(sum(v for k, v in p.counters.items() if k.startswith("events:"))),
            "stream_time_ms": p.features.stream_time_ms,
            "model": p.model_name, "rollout": p.rollout.snapshot(), "drift": p.drift.snapshot(),
        })

    def _process(self, messages: list) -> None:
        t0 = time.perf_counter()
        self._apply(messages)
        spent = time.perf_counter() - t0
        if spent >= SLOW_STEP_S:
            log.info("slow batch: %.2fs for %d messages", spent, len(messages))

    def _apply(self, messages: list) -> None:
        inter: list[Record] = []
        cat: list[Record] = []
        offsets = self.offsets
        oldest_ms = None  # the oldest message timestamp of the batch: how long it waited
        for m in messages:
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error: %s", err)
                continue
            topic = m.topic()
            ts_type, ts = m.timestamp()
            rec = Record(topic, m.partition(), m.offset(), m.value(), m.key(), ts if ts_type else None)
            if ts_type and (oldest_ms is None or ts < oldest_ms):
                oldest_ms = ts
            (cat if topic == self.settings.catalogue_topic else inter).append(rec)
            offsets[topic][m.partition()] = m.offset() + 1
        p = self.pipeline
        now_ms = int(time.time() * 1000)
        p.set_behind(is_behind(self.settings, len(messages), oldest_ms, now_ms),
                     None if oldest_ms is None else now_ms - oldest_ms)
        if cat:  # catalogue first: an item upserted in the same batch is known to its first click
            self._dead_letter(p.process_catalogue(cat).rejected)
        if inter:
            self._dead_letter(p.process_interactions(inter).rejected)

    def run(self) -> None:
        s = self.settings
        server = serve(self.metrics, s.web_host, s.web_port) if s.web_port > 0 else None
        recovery_s = self.recover()
        # The recovered state is millions of long-lived objects: move them out of the collector's
        # view and make full collections rarer (a full pass took ~0.6 s at ~590k objects, a pause
        # every list waiting behind it pays).
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
        self.metrics.recovered = True
        print(f"freshrec worker: recovery {recovery_s:.2f}s (checkpoint v{self.checkpoint_version})", flush=True)
        common = {"bootstrap.servers": s.kafka_brokers}
        self.consumer = Consumer({**common, "group.id": s.app_id, "enable.auto.commit": False,
                                  "auto.offset.reset": "earliest", "max.partition.fetch.bytes": MAX_MESSAGE_BYTES,
                                  "fetch.max.bytes": 4 * MAX_MESSAGE_BYTES, "queued.max.messages.kbytes": 262144})
        self.producer = Producer({**common, "linger.ms": 5, "message.max.bytes": MAX_MESSAGE_BYTES + 65536})
        self.consumer.subscribe(self.topics, on_assign=self._on_assign)
        probe = KafkaProbe(self.consumer, s.interactions_topic, self.metrics).start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._request_stop)
        timeout = s.batch_within_ms / 1000.0
        last_commit = last_stats = last_checkpoint = time.monotonic()
        stats_key = self.pipeline.keys.worker_stats(s.app_id)
        p = self.pipeline
        try:
            while not self.stopping:
                wait = 0 if p.lists_deferred and not p.behind else timeout  # caught up with lists waiting: no idle wait
                messages = self.consumer.consume(num_messages=s.batch_max, timeout=wait)
                self.metrics.beat()
                if messages:
                    self._process(messages)
                    # what the batch left is long-lived state: out of the collector's view, so
                    # young collections never walk it again (no cycles are left behind, see
                    # tests/state/test_pipeline.py; ~6% fewer instructions per event on a backlog)
                    gc.freeze()
                elif p.behind:  # nothing came within the wait: caught up (the last batch's verdict must not stick)
                    p.set_behind(False)
                if self.gate is not None:
                    self._open_gate()
                if p.due():
                    self.flush()
                    self._sync_rollout()
                now = time.monotonic()
                if now - last_commit >= 1.0:
                    last_commit = now
                    self._commit()
                    self.reap_checkpoint()
                    self.poll_rollout()
                    self._sync_rollout()
                    self._update_metrics()
                if now - last_checkpoint >= checkpoint_due_s(s, p.behind or p.lists_deferred):
                    self.checkpoint()
                    last_checkpoint = time.monotonic()
                if now - last_stats >= 5.0:
                    last_stats = now
                    stats = self.stats()
                    try:
                        self.redis.set(stats_key, orjson.dumps(stats))
                        self.metrics.redis_ok = True
                    except redis.RedisError:
                        self.metrics.redis_ok = False
                    log.info("stats %s", orjson.dumps(stats).decode())
        finally:
            log.info("stopping: final checkpoint and flush")
            try:
                # checkpoint first: it holds the users still waiting for a list, so a flush cut
                # short (a long backlog of them, a grace period that ends in SIGKILL) loses nothing
                self.checkpoint(wait=True)
                self.flush(force=True)
                self._sync_rollout()
                self._commit()
            finally:
                probe.stop()
                self.consumer.close()
                if server is not None:
                    server.shutdown()

    def _request_stop(self, signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping after this batch", signum)
        self.stopping = True


def run_stream_worker(settings: Settings, loglevel: str = "info") -> None:
    """Create the topics if missing, then run the stream engine until SIGTERM/SIGINT."""
    from freshrec.streams.topics import ensure_topics

    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ensure_topics(settings)
    StreamWorker(settings).run()
