"""The worker's per-batch logic, as plain Python: decode, validate, apply, recompute, publish.

The Faust agents only move records in and rows/lists out; everything they call is here so it
runs (and is tested) without a broker. One :class:`Pipeline` holds a worker's whole state.

Recomputation is coalesced: an event marks its user pending; :meth:`Pipeline.collect_updates`
runs every ``recompute_interval_ms`` and recomputes each pending user once, however many events
arrived for them since the last flush. Trending and ``similar`` lists refresh on their own,
slower interval.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Callable, Iterable, MutableMapping, Sequence

import numpy as np

from freshrec.settings import Settings
from freshrec.state.catalogue import Catalogue
from freshrec.state.clickmodel import FEATURES
from freshrec.state.drift import DriftMonitor
from freshrec.state.features import Dirty, FeatureStore
from freshrec.state.ann import ItemIndex
from freshrec.state.publisher import RedisKeys, Updates, recs_payload, similar_payload, trending_payload
from freshrec.state.popularity import ctr
from freshrec.state.quicklists import Served, ServedLists, engaged_since, quick_list
from freshrec.state.random_recommender import RandomRecommender
from freshrec.state.recommender import CoVisitationRecommender
from freshrec.state.ranking import LearningRecommender
from freshrec.state.registry import CHALLENGER, CHAMPION, ModelSpec, RolloutConfig
from freshrec.state.rollout import Rollout, request_id
from freshrec.state.trending import Trending
from freshrec.streams.audit import audit_record
from freshrec.streams.schema import CATALOGUE_TYPES, INTERACTION_TYPES, InvalidEvent, decode_event


@dataclass(frozen=True)
class Record:
    """One Kafka message as the worker sees it."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    timestamp_ms: int | None = None


@dataclass(frozen=True)
class Rejected:
    """A record that goes to the dead-letter topic, with the reason."""

    record: Record
    reason: str
    detail: str


@dataclass
class BatchResult:
    dirty: Dirty = field(default_factory=Dirty)
    catalogue_dirty: dict[str, int] = field(default_factory=dict)  # item_id -> partition
    rejected: list[Rejected] = field(default_factory=list)
    applied: int = 0
    duplicates: int = 0


log = logging.getLogger("freshrec.pipeline")
PUBLISH_CHUNK = 64  # users ranked per batch (publish_many); the time budget is checked between batches
MIN_PUBLISH_CHUNK = 4  # the smallest batch when a time budget sets its size (Pipeline._chunk)
OVERLOAD_CHUNK = 32  # the smallest batch while quick lists serve the users waiting (a batch's fixed costs)
SIMILAR_BUDGET_SHARE = 0.25  # similar:{item} lists get this share of a flush's time budget
QUICK_MAX_LAG_MS = 5000  # behind the stream by less than this, quick lists go on (see set_behind)
QUICK_MAX_WAIT_MS = 5000  # users whose newest event came longer ago than this wait for a ranked list (a backlog's)
SIMILAR_MADE_MAX = 100_000  # items whose similar list's time is remembered before the old ones are dropped


def publish_many(recommender: object, rows: list[tuple[str, dict | None]], k: int) -> list[list]:
    """The recommender's lists for a batch of ``(user_id, user_row)``, batched where it can."""
    many = getattr(recommender, "publish_many", None)
    if many is not None:
        return many(rows, k)
    return [recommender.publish_one(user_id, row, k) for user_id, row in rows]


def wall_ms() -> int:
    return int(time.time() * 1000)


class Pipeline:
    """A worker's state and the functions the agents call on each batch.

    ``partials``: keep per-partition item rows beside the merged views (the Faust engine's
    tables, whose partitions move between workers); False for a worker that owns every
    partition and checkpoints its whole state (see :class:`FeatureStore`)."""

    def __init__(self, settings: Settings, users: MutableMapping[str, dict] | None = None,
                 items: MutableMapping[str, dict] | None = None,
                 covis: MutableMapping[str, dict] | None = None,
                 catalogue: MutableMapping[str, dict] | None = None,
                 clock: Callable[[], int] = wall_ms, rollout: RolloutConfig | None = None,
                 partials: bool = True) -> None:
        self.settings = settings
        self.clock = clock
        self.keys = RedisKeys(settings.redis_prefix)
        self.features = FeatureStore(settings, users, items, covis, partials=partials)
        self.catalogue = Catalogue(catalogue)
        self.trending = Trending(self.features.item_stats, self.catalogue, settings.trending_k)
        self.drift = DriftMonitor([*FEATURES, "prediction"], window=settings.drift_window)
        self.rollout = Rollout(rollout or RolloutConfig.default(settings), self._build)
        self._watch_drift()
        self.audit: list[dict] = []  # audit records of changes made here (auto-rollback), for the worker to send
        self.rollout_changed: RolloutConfig | None = None  # a config changed here, for the worker to store
        self._seq = 0
        self.republish_only: set[str] = set()  # queued by a rollout change, no new event since
        self.pending_users: dict[str, None] = {}  # insertion-ordered set of users to recompute
        self.unreflected: dict[str, int] = {}  # users with events no published list reflects yet -> when the newest came (clock ms; newest last)
        self.arrived: set[str] = set()  # users with events since the last flush made lists
        self.served = ServedLists()  # each user's last published list: the base of quick lists
        self.lists_deferred = False  # the last flush's budget left some of them waiting (see _users_due)
        self.deleted_users: set[str] = set()
        self.pending_similar: set[str] = set()
        self.similar_made: dict[str, int] = {}  # item -> when its similar list was last made (clock ms)
        self.last_recompute_ms = 0
        self.last_trending_ms = 0
        self.changed_since_trending = True  # anything applied since trending was last computed
        self.counters: Counter[str] = Counter()
        self.behind = False  # set by the worker per consume batch (set_behind)
        self.lag_ms: int | None = None  # how long the last batch's oldest event waited, when the worker knows
        self._list_cost_s: float | None = None  # moving average of the seconds one list takes

    def _build(self, spec: ModelSpec, warm_from: object | None) -> object:
        """The recommender of a model spec. A learning challenger starts from a copy of a learning
        champion's learned state (vectors, index, click model) when their MF sizes match: a cold
        model would lose any CTR comparison for reasons that say nothing of its configuration."""
        if spec.kind == "covis":
            return CoVisitationRecommender(self.features.covis, self.catalogue, self.trending)
        if spec.kind == "random":
            return RandomRecommender(self.catalogue, self.settings.seed)
        if spec.kind != "learning":
            raise ValueError(f"model kind {spec.kind!r}: expected 'learning', 'covis' or 'random'")
        settings = spec.settings(self.settings)
        rec = LearningRecommender(settings, self.features, self.catalogue, self.trending)
        if isinstance(warm_from, LearningRecommender) and warm_from.mf.n_factors == rec.mf.n_factors:
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "items.hnsw")
                warm_from.index.save(path)
                rec.load_state(copy.deepcopy(warm_from.to_state()), ItemIndex.load(path))
            rec.mf.lr = settings.mf_lr
        return rec

    def _watch_drift(self) -> None:
        """Sample the champion's served feature rows and predictions into the drift monitor."""
        rec = self.rollout.champion
        if isinstance(rec, LearningRecommender):
            observe = self.drift.observe
            rec.observer = lambda X, p: observe(np.column_stack([X, p]))

    @property
    def recommender(self) -> CoVisitationRecommender | LearningRecommender | RandomRecommender:
        """The champion's recommender: what serves every user outside a challenger arm."""
        return self.rollout.champion

    @property
    def learning(self) -> bool:
        return isinstance(self.recommender, LearningRecommender)

    @property
    def model_kind(self) -> str:
        return self.rollout.config.champion.kind

    @property
    def model_name(self) -> str:
        return self.rollout.config.champion.label

    def rebuild(self, partitions: set[int] | None = None) -> None:
        """Rebuild derived views after the tables were recovered or partitions reassigned."""
        self.features.rebuild(partitions)
        self.catalogue.rebuild()
        for rec in self.rollout.learners():
            rec.covis = self.features.covis
        self.trending.refresh(self.features.stream_time_ms, self.features.item_stats)
        self.last_trending_ms = 0

    # ------------------------------------------------------------------ checkpoints
    def to_state(self) -> dict:
        """The whole state as plain picklable data, for a checkpoint (the stream engine saves it
        with the offsets it reflects; the MF index graph is saved beside it, see ``index``)."""
        f = self.features
        return {
            "version": 1, "model": self.model_kind, "rollout": self.rollout.config.to_dict(),
            "users": dict(f.users), "items": f.item_rows(), "covis": f.covis_rows(), "partials": f.partials,
            "catalogue": dict(self.catalogue.rows), "stream_time_ms": f.stream_time_ms,
            "pending_users": list(self.pending_users), "deleted_users": list(self.deleted_users),
            "pending_similar": list(self.pending_similar), "counters": dict(self.counters),
            "recommender": self.recommender.to_state() if self.learning else None,
        }

    def load_state(self, state: dict, index=None) -> None:
        """Restore :meth:`to_state` (``index``: the saved MF item index, rebuilt when None)."""
        if state.get("model") != self.model_kind:
            raise ValueError(f"checkpoint holds model {state.get('model')!r}, the worker runs "
                             f"{self.model_kind!r}: use a fresh FRESHREC_APP_ID or FRESHREC_MODEL")
        f = self.features
        f.users.clear(); f.users.update(state["users"])  # noqa: E702
        f.load_rows(state["items"], state["covis"], partials=state.get("partials", True))
        self.catalogue.rows.clear(); self.catalogue.rows.update(state["catalogue"])  # noqa: E702
        self.rebuild()
        f.stream_time_ms = max(f.stream_time_ms, state["stream_time_ms"])
        self.pending_users = dict.fromkeys(state["pending_users"])
        self.deleted_users = set(state["deleted_users"])
        self.pending_similar = set(state["pending_similar"])
        self.counters = Counter(state["counters"])
        if self.learning:
            self.recommender.load_state(state["recommender"], index)
        self.rollout.restart_challenger()  # not checkpointed: warm-started again from the champion

    # ------------------------------------------------------------------ ingest
    def _decode(self, record: Record, allowed: frozenset[str], now_ms: int,
                result: BatchResult) -> dict | None:
        s = self.settings
        try:
            if record.value is None:
                raise InvalidEvent("not_json", "empty message (null value)")
            event = decode_event(record.value, max_bytes=s.max_event_bytes, now_ms=now_ms,
                                 max_future_ms=int(s.max_future_s * 1000))
            if event["type"] not in allowed:
                raise InvalidEvent("wrong_topic", f"event type {event['type']!r} does not belong "
                                                  f"on topic {record.topic!r}")
        except InvalidEvent as exc:
            result.rejected.append(Rejected(record, exc.reason, exc.detail))
            self.counters[f"deadletter:{exc.reason}"] += 1
            return None
        return event

    def process_interactions(self, records: Iterable[Record]) -> BatchResult:
        """Validate and apply a batch from the interactions topic (any mix of partitions)."""
        result = BatchResult()
        now = self.clock()
        decoded = [(record, self._decode(record, INTERACTION_TYPES, now, result)) for record in records]
        decoded = [(record, event) for record, event in decoded if event is not None]
        learning = [r for r in self.rollout.learners() if isinstance(r, LearningRecommender)]
        learners = [r.learn_event for r in learning]
        with ExitStack() as batch:  # per-batch learning work done once, at its end (learning_batch)
            events = [event for _, event in decoded]
            for rec in learning:
                batch.enter_context(rec.learning_batch(events))
            self._apply_interactions(decoded, learners, result)
        return result

    def _apply_interactions(self, decoded: list[tuple[Record, dict]],
                            learners: list[Callable[[dict, dict | None], None]], result: BatchResult) -> None:
        features = self.features
        apply = features.apply
        observe = self.rollout.observe
        catalogue_rows = self.catalogue.rows
        arrived_at = self.clock()
        for record, event in decoded:
            if learners and features.is_new(event, record.offset):
                row = features.user(event["user_id"])
                for learn in learners:
                    learn(event, row)
            if not apply(event, record.partition, record.offset, result.dirty):
                result.duplicates += 1
                self.counters["duplicates"] += 1
                continue
            if event["type"] == "user_delete":
                self.rollout.forget_user(event["user_id"])
            else:
                observe(event)
            result.applied += 1
            self.changed_since_trending = True
            self.counters[f"events:{event['type']}"] += 1
            user_id = event["user_id"]
            if event["type"] == "user_delete":
                self.deleted_users.add(user_id)
                self.pending_users.pop(user_id, None)
                self.unreflected.pop(user_id, None)
                self.served.forget(user_id)
            else:
                self.deleted_users.discard(user_id)
                self.pending_users.pop(user_id, None)  # to the newest end (see collect_updates)
                self.pending_users[user_id] = None
                self.unreflected.pop(user_id, None)
                self.unreflected[user_id] = arrived_at
                self.arrived.add(user_id)
                self.republish_only.discard(user_id)
                if event["type"] != "impression":
                    item = event["item_id"]
                    self.pending_similar.add(item)
                    if item not in catalogue_rows:  # data quality: the item was never upserted (yet)
                        self.counters["uncatalogued_item_events"] += 1

    def process_catalogue(self, records: Iterable[Record]) -> BatchResult:
        """Validate and apply a batch from the catalogue topic."""
        result = BatchResult()
        now = self.clock()
        for record in records:
            event = self._decode(record, CATALOGUE_TYPES, now, result)
            if event is None:
                continue
            if self.catalogue.apply(event):
                for rec in self.rollout.learners():
                    rec.observe_catalogue(event)
                result.applied += 1
                self.changed_since_trending = True
                result.catalogue_dirty[event["item_id"]] = record.partition
                self.counters[f"events:{event['type']}"] += 1
                if event["type"] == "item_delete":
                    self.last_trending_ms = 0  # a deleted item must leave trending lists now
                    self.pending_similar.add(event["item_id"])
        return result

    def set_behind(self, behind: bool, lag_ms: int | None = None) -> None:
        """Whether the worker is behind the stream (the stream engine: its last consume batch came
        back full or waited too long, ``agents.stream_worker.is_behind``). While
        behind, the click model learns from ``click_sample_behind`` of the impressions, chosen by
        request id (and the MF model learns the sampled slates' negatives at weight / share);
        counts, clicks and every other event are learned as always (load shedding of the
        costliest learning step, see ``LearningRecommender.click_sample``), and an index refresh
        re-indexes at most ``index_batch_max_behind`` items (most-moved first). Lists get
        ``recompute_budget_behind_ms`` per flush instead of ``recompute_budget_ms``: a list made
        while the user's later events still wait in the backlog is made again once they are
        applied, so catching up first gives fresher lists sooner. The click model's sample
        also applies while the last flush left lists waiting (see :meth:`_shed`). ``lag_ms``: how
        long the batch's oldest event waited; quick lists go on while that is under
        ``QUICK_MAX_LAG_MS`` (a worker a few hundred ms behind serves its active users; one deep in
        a backlog catches up first)."""
        self.behind = behind
        self.lag_ms = lag_ms
        self._shed()
        if behind:
            self.counters["batches_behind"] += 1

    def _shed(self) -> None:
        """The click model learns ``click_sample_behind`` of the impressions while the worker is
        behind or the last flush's budget left lists waiting: overloaded either way. Caught up
        with the stream at 5k events/s (benchmark, py-spy on the worker), learning took 77% of
        the loop and lists 9%, and featurising every slate for the click model was 21%: the
        costliest learning step gives way to the lists of users active now. An index refresh then
        re-indexes at most ``index_batch_max_behind`` items: 500 made the refresh's flush ~0.3 s
        once a second at 5k events/s, a wait every list made after it paid (session 17)."""
        shed = self.behind or self.lists_deferred
        share = self.settings.click_sample_behind if shed else 1.0
        for rec in self.rollout.learners():
            if isinstance(rec, LearningRecommender):
                rec.click_sample = share
                rec.behind = shed  # fewer items re-indexed per refresh: that flush delays every list

    def _budget_ms(self) -> int:
        """A flush's time budget for lists (0: no limit), smaller while behind (see set_behind)."""
        s = self.settings
        return s.recompute_budget_behind_ms if self.behind else s.recompute_budget_ms

    # ------------------------------------------------------------------ publish
    def _trending_due(self, now: int) -> bool:
        return self.changed_since_trending and now - self.last_trending_ms >= self.settings.trending_interval_ms

    def _lists_now(self, now: int) -> bool:
        """Lists are made once per ``recompute_interval_ms`` (a user's events in between share one
        list), and at once while a flush's budget left users waiting and the worker is not
        behind: caught up, it has nothing better to do than those lists (waiting the interval
        after a 100 ms flush made them at half the rate it could)."""
        return now - self.last_recompute_ms >= self.settings.recompute_interval_ms or \
            (self.lists_deferred and not self.behind and bool(self.pending_users))

    def _users_due(self, now: int) -> bool:
        return bool(self.pending_users or self.deleted_users) and self._lists_now(now)

    def due(self, now_ms: int | None = None) -> bool:
        """True when :meth:`collect_updates` has something to do now."""
        now = self.clock() if now_ms is None else now_ms
        return self._users_due(now) or self._trending_due(now)

    def collect_updates(self, force: bool = False) -> Updates:
        """Recompute what is due and return the Redis writes (each pending user once)."""
        s = self.settings
        now = self.clock()
        updates = Updates()
        if force or self._trending_due(now):
            self._collect_trending(now, updates, force)
        if not force and not self._lists_now(now):
            return updates
        self.last_recompute_ms = now
        users = self.features
        # Under overload, recompute for at most recompute_budget_ms per flush, the most recently
        # active users first: the worker keeps consuming and learning, users active now (the
        # ones about to read their list) get fresh lists, and a backlog of users whose events
        # are older waits until load drops. (Oldest-first was measured worse: after a 200k-event
        # backlog, new events queued behind 20k backlog users, freshness p50 7.8 s at 100 ev/s.)
        budget_ms = self._budget_ms()
        budget_s = budget_ms / 1000.0 if budget_ms > 0 and not force else None
        t0 = time.perf_counter()
        done: list[str] = []
        pending = list(reversed(self.pending_users))
        chunk = self._chunk(budget_s)
        if s.quick_lists and budget_s is not None and (
                not self.behind or (self.lag_ms is not None and self.lag_ms < QUICK_MAX_LAG_MS)):
            # more users wait than the budget will rank: quick lists first (they are cheap, and
            # would otherwise wait behind the ranked ones), for all but those about to be ranked.
            # When more users were active since the last flush than the budget ranks, the ranked
            # lists get the smaller budget: the loop comes round sooner, so the next events'
            # quick lists wait less, and ranking goes on in smaller slices (at 1k events/s,
            # where ranking keeps up with the active users but not with a backlog of others, the
            # budget stays, and quick lists go to those others only)
            ranked_s = min(budget_s, s.recompute_budget_behind_ms / 1000.0) if s.recompute_budget_behind_ms > 0 else budget_s
            n_full = self._ranked_per_flush(budget_s, chunk)
            overloaded = len(self.arrived) > n_full
            if overloaded:  # batches of at least OVERLOAD_CHUNK: smaller ones cost more per list
                budget_s = ranked_s
                chunk = max(self._chunk(budget_s), OVERLOAD_CHUNK)
            n_rank = self._ranked_per_flush(budget_s, chunk) if overloaded else n_full
            if len(pending) > n_rank:  # the full budget, also a little behind (their lists are what lag)
                self._quick_lists(now, updates, s.recompute_budget_ms / 1000.0, set(pending[:n_rank]))
        for start in range(0, len(pending), chunk):  # ranked in batches (state/ranking.py)
            t_chunk = time.perf_counter()
            rows = [(user_id, users.user(user_id)) for user_id in pending[start:start + chunk]]
            event_ts = [row["last_ts"] if row else 0 for _, row in rows]
            # a list republished for a rollout change reflects no new event: no freshness sample
            fresh = [None if u in self.republish_only else now - ts for (u, _), ts in zip(rows, event_ts)]
            for (user_id, row), ts, fresh_ms, (arm, scored) in zip(rows, event_ts, fresh, self._rank_chunk(rows, fresh)):
                self._seq += 1
                label = self.rollout.label(arm)
                wm = row["wm"] if row else -1
                before = self.served.get(user_id)
                # a quick list already reflected these events: the ranked list keeps its time
                first = before.reflected_at if before is not None and before.reflected_wm >= wm else None
                updates.sets.append((self.keys.recs(user_id), recs_payload(
                    user_id, scored, label, now, ts, request_id=request_id(arm, label, now, self._seq), arm=arm,
                    reflected_at=first if first is not None else now)))
                if fresh_ms is not None:
                    updates.ranked_freshness_ms.append(fresh_ms)
                    if first is None:
                        updates.freshness_ms.append(fresh_ms)
                self.served.put(user_id, Served(scored, wm, arm, label, wm, first if first is not None else now))
                self.unreflected.pop(user_id, None)
                done.append(user_id)
            t_end = time.perf_counter()
            per_list = (t_end - t_chunk) / len(rows)
            self._list_cost_s = per_list if self._list_cost_s is None else 0.8 * self._list_cost_s + 0.2 * per_list
            if budget_s is not None and t_end - t0 >= budget_s:
                break
        deferred = len(done) < len(self.pending_users)
        self.arrived.clear()
        updates.recs = len(done)
        updates.users = [*done, *self.deleted_users]
        self.counters["recomputes"] += len(done)
        if deferred != self.lists_deferred:
            self.lists_deferred = deferred
            self._shed()
        if not self.lists_deferred:
            self.pending_users.clear()
            self.republish_only.clear()
        else:
            for user_id in done:
                del self.pending_users[user_id]
                self.republish_only.discard(user_id)
            self.counters["recompute_deferred"] += len(self.pending_users)
        updates.deletes.extend(self.keys.recs(u) for u in self.deleted_users)
        self.deleted_users.clear()
        breach = self.rollout.check()
        if breach is not None:
            self.rollback(breach, actor="guardrail")
        return updates

    def _quick_lists(self, now: int, updates: Updates, budget_s: float, skip: set[str]) -> None:
        """A quick list (:mod:`~freshrec.state.quicklists`) for each user whose newest events no
        published list reflects, but those in ``skip`` (ranked next), newest first, for at most
        ``budget_s`` and while their events came within QUICK_MAX_WAIT_MS: his last ranked list
        patched with what he did since, or for a user with no
        list in memory (new, or listed before a restart) the trending list patched the same way
        (what a frontend shows a user without a list). He stays pending for a ranked list."""
        t0 = time.perf_counter()
        trending: tuple[tuple[str, float], ...] | None = None
        unreflected = self.unreflected
        for n, user_id in enumerate(reversed(unreflected)):
            if n % 64 == 63 and time.perf_counter() - t0 >= budget_s:
                break
            if now - unreflected[user_id] > QUICK_MAX_WAIT_MS:
                break  # the rest came longer ago (a backlog): they wait for their ranked lists
            if user_id in skip:
                continue
            row = self.features.user(user_id)
            if row is None:
                continue
            served = self.served.get(user_id)
            if served is None:  # never ranked (since a restart): trending is his base
                arm = self.rollout.arm_of(user_id)
                served = Served((), -1, arm, self.rollout.label(arm), -1, None)
                self.served.put(user_id, served)
            base = served.ranked
            if not base:
                if trending is None:
                    trending = [(item, self.item_ctr(item)) for item, _ in self.trending.global_list[: self.settings.recs_k]]
                base = trending
            scored = self.quick_list(row, base, served.base_wm)
            self._seq += 1
            updates.sets.append((self.keys.recs(user_id), recs_payload(
                user_id, scored, served.label, now, row["last_ts"],
                request_id=request_id(served.arm, served.label, now, self._seq), arm=served.arm,
                reflected_at=now, tier="quick")))
            updates.freshness_ms.append(now - row["last_ts"])
            served.reflected_wm, served.reflected_at = row["wm"], now
            updates.quick.append(user_id)
        for user_id in updates.quick:
            del self.unreflected[user_id]
        self.counters["quick_lists"] += len(updates.quick)

    def item_ctr(self, item: str) -> float:
        """The item's click-through rate with the configured Beta prior (rounded as published)."""
        s = self.settings
        return round(ctr(self.features.item_stats.get(item), s.ctr_prior_clicks, s.ctr_prior_impressions), 6)

    def quick_list(self, row: dict, base: Sequence[tuple[str, float]], base_wm: int,
                   k: int | None = None) -> list[tuple[str, float]]:
        """:func:`~freshrec.state.quicklists.quick_list` of a user (``row``) whose last ranked
        list ``base`` reflected his row up to offset ``base_wm``: the worker's under overload,
        and ``freshrec eval``'s measure of it."""
        s = self.settings
        return quick_list(base, engaged_since(row, base_wm), row["seen"], self.catalogue.deleted,
                          self.features.covis.neighbours, self.item_ctr, k or s.recs_k, s.quick_related)

    def _ranked_per_flush(self, budget_s: float, chunk: int) -> int:
        """How many users a flush ranks in ``budget_s`` in batches of ``chunk`` (whole batches:
        the budget is checked between them), at the measured cost of a list (one batch before
        any is measured)."""
        cost = self._list_cost_s
        return chunk if cost is None else chunk * math.ceil(budget_s / max(cost, 1e-6) / chunk)

    def _chunk(self, budget_s: float | None) -> int:
        """Users ranked per batch: PUBLISH_CHUNK, or as many as fit in a flush's time budget at
        the measured cost per list (at least MIN_PUBLISH_CHUNK). The budget is checked between
        batches, so a fixed 64 made a 25 ms budget (behind the stream) take ~150 ms."""
        if budget_s is None or self._list_cost_s is None:
            return PUBLISH_CHUNK
        return max(MIN_PUBLISH_CHUNK, min(PUBLISH_CHUNK, int(budget_s / max(self._list_cost_s, 1e-6))))

    def _rank_chunk(self, rows: list[tuple[str, dict | None]],
                    fresh: list[int | None]) -> list[tuple[str, list]]:
        """(arm, list) to publish per user: the challenger's for users in a canary/A-B arm (the
        champion's when it raises, counted as errors); a shadow challenger's lists are only
        recorded. ``fresh``: each list's freshness (None: a republish without a new event)."""
        k, rollout = self.settings.recs_k, self.rollout
        served: dict[int, list] = {}  # row -> list served by the challenger
        if rollout.challenger is not None:
            idx = [j for j, (user_id, _) in enumerate(rows) if rollout.arm_of(user_id) == CHALLENGER]
            if idx:
                try:
                    lists = publish_many(rollout.challenger, [rows[j] for j in idx], k)
                except Exception as exc:  # noqa: BLE001 - a challenger's bug must not stop serving
                    log.warning("challenger %s failed for %d users: %r", rollout.label(CHALLENGER), len(idx), exc)
                    lists = [None] * len(idx)
                for j, scored in zip(idx, lists):
                    rollout.record_list(CHALLENGER, rows[j][0], scored, fresh[j], served=not rollout.shadow)
                    if scored is not None and not rollout.shadow:
                        served[j] = scored
        out = [(CHALLENGER, served[j]) if j in served else None for j in range(len(rows))]
        rest = [j for j in range(len(rows)) if j not in served]
        for j, scored in zip(rest, publish_many(rollout.champion, [rows[j] for j in rest], k)):
            rollout.record_list(CHAMPION, rows[j][0], scored, fresh[j], served=True)
            out[j] = (CHAMPION, scored)
        return out

    # ------------------------------------------------------------------ rollout
    def _republish(self, users: set[str]) -> None:
        for user_id in users:
            self.served.forget(user_id)  # no quick list patches the arm the user left
            if self.features.user(user_id) is not None and user_id not in self.deleted_users \
                    and user_id not in self.pending_users:
                self.pending_users[user_id] = None
                self.republish_only.add(user_id)

    def apply_rollout(self, config: RolloutConfig, force: bool = False) -> int:
        """Apply a newer rollout config live (promote, rollback, share or mode change); the users
        whose arm or model changed are queued for a new list. Returns how many. ``force``: apply
        it even if its revision is not newer (the worker lost a compare-and-set race)."""
        champion = self.rollout.champion
        users = self.rollout.apply(config, list(self.features.users), force=force)
        if self.rollout.champion is not champion:  # promoted: a new model, a new reference
            self.drift.rebase()
            self._watch_drift()
        self._republish(users)
        self.counters["rollout_changes"] += 1
        return len(users)

    def rollback(self, reason: str, actor: str) -> RolloutConfig:
        """Roll the challenger back now: its users get champion lists with the next flush, and an
        audit record (with both arms' metrics at the time) is queued for the worker to send."""
        before = self.rollout.snapshot()
        config, users = self.rollout.rollback(reason)
        self._republish(users)
        self.counters["rollbacks"] += 1
        self.rollout_changed = config
        self.audit.append(audit_record("rollback", actor, reason=reason, ts=self.clock(), revision=config.revision,
                                       champion=config.champion.label, republished_users=len(users),
                                       arms=before["arms"]))
        log.warning("rolled back the challenger (%s): %s; %d users republished", actor, reason, len(users))
        return config

    def requeue(self, updates: Updates) -> None:
        """Put back what a failed publish carried, so the next flush writes it again (after the
        recompute interval: no back-to-back catch-up flushes against a Redis that is down)."""
        self.lists_deferred = False
        self._shed()
        for user_id in [*updates.quick, *updates.users]:  # lists not written: nothing reflects their events
            served = self.served.get(user_id)
            if served is not None:
                served.reflected_at = None
            if self.features.user(user_id) is not None:
                self.unreflected[user_id] = self.clock()
        for user_id in updates.users:
            if self.features.user(user_id) is None and user_id not in self.pending_users:
                self.deleted_users.add(user_id)
            else:
                self.pending_users[user_id] = None
        self.pending_similar.update(updates.similar)
        for item in updates.similar:  # not written: due again at once
            self.similar_made.pop(item, None)
        self.changed_since_trending = True

    def _collect_trending(self, now: int, updates: Updates, force: bool = False) -> None:
        self.last_trending_ms = now
        self.changed_since_trending = False
        stream_now = self.features.stream_time_ms
        self.features.covis.expire_cache(now, 0 if force else self.settings.covis_refresh_ms)
        self.trending.refresh(stream_now, self.features.item_stats)
        for name, n in self.recommender.refresh(now, stream_now).items():
            self.counters[name] += n
        if self.rollout.challenger is not None:  # it learns beside the champion: same periodic work
            self.rollout.challenger.refresh(now, stream_now)
        updates.sets.append((self.keys.trending(), trending_payload(None, self.trending.global_list, now)))
        for cat, top in self.trending.by_category.items():
            updates.sets.append((self.keys.trending(cat), trending_payload(cat, top, now)))
        # a share of the per-flush budget of user lists (item-to-item lists change slowly and
        # were measured taking 100 ms of every flush after a burst of clicks on many items):
        # under overload, the rest waits for the next refresh
        budget_ms = self._budget_ms()
        budget_s = SIMILAR_BUDGET_SHARE * budget_ms / 1000.0 if budget_ms > 0 else None
        # and an item's list is made at most once per similar_refresh_ms (deletions at once):
        # engagements touch most of a catalogue every second, its neighbours barely move
        t0 = time.perf_counter()
        made = self.similar_made
        if len(made) > SIMILAR_MADE_MAX:
            self.similar_made = made = {i: t for i, t in made.items() if now - t < self.settings.similar_refresh_ms}
        min_gap = 0 if force else self.settings.similar_refresh_ms
        done: list[str] = []
        for item in self.pending_similar:
            if self.catalogue.is_deleted(item):
                done.append(item)
                made.pop(item, None)
                updates.deletes.append(self.keys.similar(item))
                continue
            last = made.get(item)
            if last is not None and now - last < min_gap:  # made too recently: stays pending
                continue
            done.append(item)
            made[item] = now
            scored = self.recommender.similar_one(item, self.settings.similar_k)
            updates.sets.append((self.keys.similar(item),
                                 similar_payload(item, scored, self.model_name, now)))
            if budget_s is not None and time.perf_counter() - t0 >= budget_s:
                break
        updates.similar = done
        if len(done) == len(self.pending_similar):
            self.pending_similar.clear()
        else:
            self.pending_similar.difference_update(done)
            self.changed_since_trending = True  # come back for the rest

    def recommend(self, user_id: str, k: int | None = None) -> list[tuple[str, float]]:
        """The list the worker would publish for ``user_id`` now (used by eval and tests)."""
        return self.recommender.recommend_one(user_id, self.features.user(user_id), k or self.settings.recs_k)
