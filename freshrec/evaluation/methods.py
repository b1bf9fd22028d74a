"""The methods compared by ``freshrec eval``, behind one small protocol (like River's).

A method learns one event at a time and recommends for one user::

    learn_one(event: dict) -> None
    recommend_one(user_id, k, exclude: set[str]) -> list[item_id]   # best first, at most k
    name: str

A method that can also score the items of an impression slate (click prediction, MIND) has
``score_one(user_id, item_ids) -> list[float]`` and ``probabilistic: bool`` (True when the
scores are click probabilities, so log loss means something).

* ``freshrec``: the worker's own code: a :class:`~freshrec.state.pipeline.Pipeline` fed with
  ``Record`` s exactly as the Faust agents feed it; recommendations come from
  ``Pipeline.recommend`` (never a copy of the algorithm). Its click model is the item CTR with
  the Beta prior of the item statistics (no learning click model yet).
* ``popularity``: decayed popularity (:class:`~freshrec.state.popularity.ItemStats`).
* ``covis20``: independent co-occurrence baseline: pair counts with the user's last 20 items.
* ``funkmf``: River's ``reco.FunkMF`` (positive-only SGD, ISGD-like), all items scored with numpy.
* ``rtrec``: the peer library rtrec's online SLIM, fitted in small batches.
* ``item-ctr``: independent smoothed click-through rate per item (impression data only).

:func:`make_method` builds one from a spec ``name[:key=value,...]``; :func:`parse_method_specs`
splits a ``--methods`` list.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter, deque
from typing import AbstractSet, Any, Callable, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np
import orjson

from freshrec.settings import Settings, load_settings
from freshrec.state import popularity as pop
from freshrec.state.arrays import grown
from freshrec.state.features import ENGAGEMENTS
from freshrec.state.pipeline import Pipeline, Record, wall_ms
from freshrec.state.popularity import ItemStats
from freshrec.streams.schema import CATALOGUE_TYPES

__all__ = [
    "Method", "ClickScorer", "MethodError", "FreshrecMethod", "PopularityMethod", "CoVisitationMethod",
    "FunkMFMethod", "RtrecMethod", "ItemCTRMethod", "METHODS", "DEFAULT_METHODS", "make_method",
    "parse_method_specs", "top_k_indices",
]

POSITIVES = ENGAGEMENTS  # click, conversion, rating: the events that are tested
DAY_MS = 86_400_000


@runtime_checkable
class Method(Protocol):
    """What the prequential loop needs from a method."""

    name: str

    def learn_one(self, event: dict) -> None: ...

    def recommend_one(self, user_id: str, k: int, exclude: AbstractSet[str]) -> list[str]: ...


@runtime_checkable
class ClickScorer(Protocol):
    """A method that can also score the items of an impression slate."""

    probabilistic: bool

    def score_one(self, user_id: str, item_ids: Sequence[str]) -> list[float]: ...


class MethodError(RuntimeError):
    """A method cannot be built or run (missing package, bad parameter): never skipped silently."""


# ---------------------------------------------------------------------------------------- helpers

class ItemIndex:
    """Dense integer ids for item strings, so item state can live in numpy arrays."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.pos: dict[str, int] = {}

    def add(self, item: str) -> int:
        idx = self.pos.get(item)
        if idx is None:
            idx = self.pos[item] = len(self.ids)
            self.ids.append(item)
        return idx

    def get(self, item: str) -> int | None:
        return self.pos.get(item)

    def indices(self, items: Iterable[str]) -> list[int]:
        pos = self.pos
        return [i for i in (pos.get(x) for x in items) if i is not None]

    def __len__(self) -> int:
        return len(self.ids)


def top_k_indices(scores: np.ndarray, k: int, exclude: Sequence[int] = ()) -> list[int]:
    """Indices of the ``k`` highest finite scores, best first (ties: lower index first).

    ``exclude`` indices are never returned; ``scores`` is not modified.
    """
    n = scores.shape[0]
    if n == 0 or k <= 0:
        return []
    s = scores.astype(np.float64, copy=True)
    if len(exclude):
        s[np.asarray(exclude, dtype=np.int64)] = -np.inf
    m = min(k, n)
    cand = np.argpartition(-s, m - 1)[:m] if m < n else np.arange(n)
    cand = cand[np.lexsort((cand, -s[cand]))]
    return [int(i) for i in cand if np.isfinite(s[i])]


def _event_item_counts(event: dict) -> dict[str, dict[str, int]] | None:
    """Per-item ``{type: count}`` of an interaction, as the feature store counts them."""
    etype = event["type"]
    if etype == "impression":
        counts: dict[str, dict[str, int]] = {}
        for item in event["item_ids"]:
            c = counts.setdefault(item, {"impression": 0})
            c["impression"] += 1
        return counts
    if "item_id" in event and etype != "user_delete":
        return {event["item_id"]: {etype: 1}}
    return None


# ---------------------------------------------------------------------------------------- freshrec

def stable_partition(key: str, partitions: int) -> int:
    """A stable partition for ``key`` (CRC-32, same in every process, unlike ``hash``)."""
    return zlib.crc32(key.encode("utf-8")) % partitions


class FreshrecMethod:
    """The worker's :class:`Pipeline`, fed records as the agents feed it.

    Events become ``Record`` s with orjson bytes, partition = stable hash of the key (user for
    interactions, item for the catalogue) modulo ``partitions`` and increasing offsets per
    partition. Every ``refresh_every`` interactions ``collect_updates(force=True)`` runs, as the
    worker's timer does: trending and the co-visitation caches refresh then, so between refreshes
    lists use trending at most that many events old, like the worker's 1 s timer on a stream of
    ``refresh_every`` events/s. Default 100: on the MIND sample, where most tests are new users
    served from trending, HitRate@10 is 0.086 with 1000, 0.152 with 100 and 0.169 when
    refreshing after every event (8x slower); on MovieLens 100 and 1000 score the same. The clock is the wall clock, or the newest event time when that is later,
    so historical and synthetic timestamps always pass the future-timestamp check. A rejected
    record is an error here: a silently dropped event would skew the evaluation.
    """

    name = "freshrec"
    probabilistic = True
    REPORTED_SETTINGS = ("half_life_s", "covis_half_life_s", "covis_window", "covis_max_neighbors",
                         "history_len", "seen_max", "trending_k", "ctr_prior_clicks", "ctr_prior_impressions",
                         "mf_factors", "mf_lr", "weight_impression", "explore_share", "diversity_max_share",
                         "ann_candidates", "content_candidates")

    def __init__(self, settings: Settings | None = None, refresh_every: int = 100, partitions: int = 8,
                 index_every: int = 1000, ranked_every_s: float = 0.0, **overrides: Any) -> None:
        base = settings if settings is not None else load_settings()
        try:
            self.settings = base.replace(**overrides) if overrides else base
        except TypeError as exc:
            raise MethodError(f"freshrec: unknown setting in {sorted(overrides)} ({exc})") from None
        # the index refresh is driven by event counts here (the worker's is by wall time), so
        # that a run gives the same numbers on a fast and on a slow machine
        self.settings = self.settings.replace(index_refresh_ms=10**12)
        self.refresh_every = max(1, int(refresh_every))
        self.index_every = max(1, int(index_every))
        self._since_index = 0
        self.partitions = int(partitions)
        self.latest_ts = 0
        self.pipeline = Pipeline(self.settings, clock=self._clock, partials=False)  # as the stream engine
        self._offsets: dict[tuple[str, int], int] = {}
        self._since_refresh = 0
        # ranked_every_s > 0: a user's test list is ranked at most once per that many seconds of
        # stream time, and a quick list of his last ranked one in between (state/quicklists.py):
        # the quality of what an overloaded worker serves
        self.ranked_every_s = float(ranked_every_s)
        self._ranked: dict[str, tuple[int, list[tuple[str, float]], int]] = {}  # user -> (stream ms, list, row wm)
        self.tests = Counter()
        s = self.settings
        self.params = {"model": s.model, "refresh_every": self.refresh_every, "index_every": self.index_every,
                       "ranked_every_s": self.ranked_every_s,
                       "partitions": self.partitions, **overrides,
                       "settings": {f: getattr(s, f) for f in self.REPORTED_SETTINGS}}

    def _clock(self) -> int:
        return max(wall_ms(), self.latest_ts)

    def _record(self, topic: str, key: str, event: dict) -> Record:
        p = stable_partition(key, self.partitions)
        off = self._offsets.get((topic, p), -1) + 1
        self._offsets[(topic, p)] = off
        return Record(topic, p, off, orjson.dumps(event), key.encode("utf-8"))

    def learn_one(self, event: dict) -> None:
        ts = event.get("ts")
        if isinstance(ts, (int, float)) and ts > self.latest_ts:
            self.latest_ts = int(ts)
        s = self.settings
        if event["type"] in CATALOGUE_TYPES:
            result = self.pipeline.process_catalogue([self._record(s.catalogue_topic, event["item_id"], event)])
        else:
            result = self.pipeline.process_interactions(
                [self._record(s.interactions_topic, event["user_id"], event)])
            self._since_refresh += 1
            self._since_index += 1
            if self.pipeline.learning and self._since_index >= self.index_every:
                self.pipeline.recommender.refresh_index()
                self._since_index = 0
            if self._since_refresh >= self.refresh_every:
                self.refresh()
        if result.rejected:
            r = result.rejected[0]
            raise MethodError(f"freshrec: the pipeline rejected event {event.get('event_id')!r}: "
                              f"{r.reason}: {r.detail}")

    def refresh(self) -> None:
        """What the worker's timer does: recompute pending lists, trending and similar items."""
        self.pipeline.collect_updates(force=True)
        self._since_refresh = 0

    def stats(self) -> dict[str, Any]:
        out = {"counters": dict(self.pipeline.counters), "refresh_every_events": self.refresh_every}
        if self.ranked_every_s > 0:
            out["tests_by_tier"] = dict(self.tests)
        if self.pipeline.learning:
            rec = self.pipeline.recommender
            out["click_model_weights"] = {k: round(v, 4) for k, v in rec.clicks.weights.items()}
            out["learning_counters"] = dict(rec.counters)
        return out

    def recommend_one(self, user_id: str, k: int, exclude: AbstractSet[str]) -> list[str]:
        # The pipeline already excludes the user's seen set; ask for more only when the
        # evaluator's exclusions (unbounded) cut the list short.
        if self.ranked_every_s > 0:
            return [i for i in self._tiered(user_id) if i not in exclude][:k]
        recs = [i for i, _ in self.pipeline.recommend(user_id, k) if i not in exclude]
        if len(recs) < k and exclude:
            recs = [i for i, _ in self.pipeline.recommend(user_id, k + len(exclude)) if i not in exclude]
        return recs[:k]

    def _tiered(self, user_id: str) -> list[str]:
        """The user's published list (``recs_k`` long) when ranked lists come at most every
        ``ranked_every_s`` of stream time and quick lists in between."""
        p = self.pipeline
        row = p.features.user(user_id)
        last = self._ranked.get(user_id)
        if row is not None and last is not None and self.latest_ts - last[0] < self.ranked_every_s * 1000.0:
            self.tests["quick"] += 1
            return [i for i, _ in p.quick_list(row, last[1], last[2])]
        scored = p.recommend(user_id)
        self._ranked[user_id] = (self.latest_ts, scored, row["wm"] if row else -1)
        self.tests["ranked"] += 1
        return [i for i, _ in scored]

    def score_one(self, user_id: str, item_ids: Sequence[str]) -> list[float]:
        """Click probability: the learning model's click model, given each item's position on the
        slate (a feature of the impression the ranker learns from; item-CTR ignores it), or for
        ``model=covis`` the item's CTR with the pipeline's Beta prior."""
        p = self.pipeline
        if p.learning:
            positions = [item_ids.index(i) for i in item_ids]  # first position of each shown item
            return p.recommender.score_items(user_id, p.features.user(user_id), item_ids, positions).tolist()
        stats = self.pipeline.features.item_stats
        a, b = self.settings.ctr_prior_clicks, self.settings.ctr_prior_impressions
        return [pop.ctr(stats.get(item), a, b) for item in item_ids]


# ---------------------------------------------------------------------------------------- popularity

class PopularityMethod:
    """Decayed popularity from :class:`ItemStats` (the worker's item statistics code).

    Ranking all items with ``ItemStats.top`` costs one ``2**x`` per item per request. Since every
    item decays at the same rate, the order is that of ``log2(pop) + t0 / half_life`` (time
    invariant), which is kept in a numpy array updated on each event: same ranking, exact
    (checked against ``ItemStats.top`` in the tests). ``half_life_s=0`` means no decay.
    """

    name = "popularity"
    probabilistic = False

    def __init__(self, half_life_s: float = 86400.0) -> None:
        self.half_life_s = float(half_life_s)
        self.half_life_ms = self.half_life_s * 1000.0 if self.half_life_s > 0 else math.inf
        self.stats = ItemStats(self.half_life_ms)
        self.index = ItemIndex()
        self.key = np.full(0, -np.inf)
        self.now_ms = 0
        self.params = {"half_life_s": self.half_life_s}

    def learn_one(self, event: dict) -> None:
        if event["type"] in CATALOGUE_TYPES:
            return
        counts = _event_item_counts(event)
        if not counts:
            return
        ts = event["ts"]
        self.now_ms = max(self.now_ms, ts)
        for item, c in counts.items():
            self.stats.add(item, c, ts)
            row = self.stats.get(item)
            if row and row.get("pop"):
                idx = self.index.add(item)
                self.key = grown(self.key, idx + 1, -np.inf, minimum=64)
                self.key[idx] = math.log2(row["pop"]) + row["t0"] / self.half_life_ms

    def recommend_one(self, user_id: str, k: int, exclude: AbstractSet[str]) -> list[str]:
        n = len(self.index)
        top = top_k_indices(self.key[:n], k, self.index.indices(exclude))
        return [self.index.ids[i] for i in top]

    def score_one(self, user_id: str, item_ids: Sequence[str]) -> list[float]:
        return [self.stats.popularity(i, self.now_ms) for i in item_ids]


# ---------------------------------------------------------------------------------------- covis20

class CoVisitationMethod:
    """Co-occurrence baseline, independent of freshrec's code.

    When a user engages with item j, each distinct item i among their previous ``window`` (20)
    engaged items gets one co-count with j (both directions). A user's scores are the sums of
    the co-counts with their last ``window`` items; all-time popularity (scaled below 0.5, so it
    never outweighs one co-count) breaks ties and fills the list, e.g. for new users. Co-counts
    live in a dense float32 matrix (grown by doubling) while the catalogue has at most
    ``max_dense_items`` engaged items, in dicts beyond.
    """

    name = "covis20"
    probabilistic = False

    def __init__(self, window: int = 20, max_dense_items: int = 12_000) -> None:
        self.window = int(window)
        self.max_dense_items = int(max_dense_items)
        self.index = ItemIndex()
        self.co = np.zeros((0, 0), dtype=np.float32)
        self.rows: dict[int, dict[int, float]] | None = None  # sparse mode
        self.counts = np.zeros(0)
        self.max_count = 0.0
        self.recent: dict[str, deque[int]] = {}
        self.params = {"window": self.window}

    def _add_item(self, item: str) -> int:
        idx = self.index.add(item)
        n = idx + 1
        self.counts = grown(self.counts, n, minimum=64)
        if self.rows is None and n > self.co.shape[0]:
            if n > self.max_dense_items:  # switch to sparse rows
                co = self.co
                self.rows = {i: {int(j): float(co[i, j]) for j in np.flatnonzero(co[i])} for i in range(co.shape[0])}
                self.co = np.zeros((0, 0), dtype=np.float32)
            else:
                cap = min(max(n, 2 * self.co.shape[0], 256), self.max_dense_items)
                co = np.zeros((cap, cap), dtype=np.float32)
                old = self.co.shape[0]
                co[:old, :old] = self.co
                self.co = co
        return idx

    def learn_one(self, event: dict) -> None:
        etype = event["type"]
        if etype == "user_delete":
            self.recent.pop(event["user_id"], None)
            return
        if etype not in POSITIVES:
            return
        j = self._add_item(event["item_id"])
        last = self.recent.get(event["user_id"])
        if last is None:
            last = self.recent[event["user_id"]] = deque(maxlen=self.window)
        nb = sorted({i for i in last if i != j})
        if nb:
            if self.rows is None:
                self.co[j, nb] += 1.0
                self.co[nb, j] += 1.0
            else:
                rj = self.rows.setdefault(j, {})
                for i in nb:
                    rj[i] = rj.get(i, 0.0) + 1.0
                    ri = self.rows.setdefault(i, {})
                    ri[j] = ri.get(j, 0.0) + 1.0
        if j in last:
            last.remove(j)
        last.append(j)
        self.counts[j] += 1.0
        self.max_count = max(self.max_count, self.counts[j])

    def _scores(self, user_id: str) -> np.ndarray:
        n = len(self.index)
        scores = 0.5 * self.counts[:n] / (self.max_count + 1.0)
        last = self.recent.get(user_id)
        if last:
            idx = list(last)
            if self.rows is None:
                co = self.co[idx, :n].sum(axis=0, dtype=np.float64)
            else:
                co = np.zeros(n)
                for i in idx:
                    for j, c in self.rows.get(i, {}).items():
                        co[j] += c
            scores += co  # integer co-counts first, then the tie-break: same in both modes
        return scores

    def recommend_one(self, user_id: str, k: int, exclude: AbstractSet[str]) -> list[str]:
        top = top_k_indices(self._scores(user_id), k, self.index.indices(exclude))
        return [self.index.ids[i] for i in top]

    def score_one(self, user_id: str, item_ids: Sequence[str]) -> list[float]:
        scores = self._scores(user_id)
        get = self.index.get
        return [float(scores[i]) if (i := get(item)) is not None else 0.0 for item in item_ids]


# ---------------------------------------------------------------------------------------- funkmf

class FunkMFMethod:
    """River's ``reco.FunkMF`` alone, scoring every item per request with numpy.

    Positives are learned with ``y = 1`` (ISGD-style, implicit feedback). With
    ``impression_negatives`` (default) each shown item of an impression, and a dismissed item,
    is learned with ``y = 0`` (MIND has them; MovieLens has none). ``predict_one`` per item would
    be one Python call per catalogue item per test, so the item latent vectors are kept as rows
    of one numpy matrix: each ``i_latents[item]`` entry is a view of its row. River's SGD
    updates the vectors in place (``w[i] -= lr * g``), so the matrix is always current (checked
    against ``predict_one`` in the tests). Defaults: 10 factors, SGD lr 0.02, l2 0.001 (the best
    of six settings tried on MovieLens 100K: HitRate@10 0.029-0.054; River's own default lr 0.1
    gave 0.038).
    """

    name = "funkmf"
    probabilistic = False

    def __init__(self, n_factors: int = 10, lr: float = 0.02, l2: float = 0.001, sigma: float = 0.1,
                 seed: int = 42, impression_negatives: bool = True) -> None:
        from river import optim, reco

        self.model = reco.FunkMF(
            n_factors=int(n_factors), optimizer=optim.SGD(float(lr)), l2=float(l2),
            initializer=optim.initializers.Normal(mu=0.0, sigma=float(sigma), seed=int(seed)), seed=int(seed))
        self.impression_negatives = bool(impression_negatives)
        self.index = ItemIndex()
        self.q = np.zeros((0, int(n_factors)))
        self.params = {"n_factors": int(n_factors), "lr": float(lr), "l2": float(l2), "sigma": float(sigma),
                       "seed": int(seed), "impression_negatives": self.impression_negatives}

    def _register(self, item: str) -> int:
        idx = self.index.get(item)
        if idx is not None:
            return idx
        idx = self.index.add(item)
        latents = self.model.i_latents
        if idx >= self.q.shape[0]:
            self.q = grown(self.q, idx + 1, minimum=64)
            for other, j in self.index.pos.items():  # re-point the views at the new matrix
                if j < idx:
                    latents[other] = self.q[j]
        self.q[idx] = latents[item]  # the model's own initialisation (defaultdict)
        latents[item] = self.q[idx]
        return idx

    def learn_one(self, event: dict) -> None:
        etype = event["type"]
        user = event.get("user_id")
        if etype in POSITIVES:
            self._register(event["item_id"])
            self.model.learn_one(user, event["item_id"], 1.0)
        elif self.impression_negatives and etype == "impression":
            for item in event["item_ids"]:
                self._register(item)
                self.model.learn_one(user, item, 0.0)
        elif self.impression_negatives and etype == "dismiss":
            self._register(event["item_id"])
            self.model.learn_one(user, event["item_id"], 0.0)

    def _user(self, user_id: str) -> np.ndarray:
        return self.model.u_latents[user_id]

    def recommend_one(self, user_id: str, k: int, exclude: AbstractSet[str]) -> list[str]:
        n = len(self.index)
        if not n:
            return []
        scores = self.q[:n] @ self._user(user_id)
        top = top_k_indices(scores, k, self.index.indices(exclude))
        return [self.index.ids[i] for i in top]

    def score_one(self, user_id: str, item_ids: Sequence[str]) -> list[float]:
        rows = [self._register(i) for i in item_ids]
        return (self.q[rows] @ self._user(user_id)).tolist()


# ---------------------------------------------------------------------------------------- rtrec

class RtrecMethod:
    """The peer library rtrec (PyPI) and its online SLIM, fitted every ``batch_size`` positives.

    Uses rtrec's own API: ``rtrec.models.SLIM(**kwargs)``, ``fit(interactions,
    update_interaction=False, progress_bar=False)`` with ``(user, item, tstamp_s, 1.0)`` tuples
    (its ``Recommender.fit(DataFrame)`` wrapper does the same plus prints and progress bars), and
    ``recommend(user, top_k=..., filter_interacted=True)``. Between fits, the newest positives
    wait in a buffer (that is the model's staleness). Users rtrec has not been fitted on get its
    hot items; rtrec 0.2.7 returns those as internal indices, which are mapped back to item ids
    here (``stats()['unknown_user_requests']`` counts them: 66% of MovieLens 100K tests, because
    users rate in sessions shorter than a batch).
    """

    name = "rtrec"
    probabilistic = False

    def __init__(self, batch_size: int = 1000, **slim_kwargs: Any) -> None:
        try:
            from rtrec.models import SLIM
        except Exception as exc:  # noqa: BLE001 - any import failure: say precisely what
            raise MethodError(f"rtrec: cannot import rtrec.models.SLIM ({type(exc).__name__}: {exc}); "
                              "install it with `pip install rtrec` (PyPI, tested with 0.2.7)") from exc
        self.batch_size = max(1, int(batch_size))
        self.model = SLIM(**slim_kwargs)
        self.buffer: list[tuple[str, str, float, float]] = []
        self.fits = 0
        self.unknown_user_requests = 0  # users rtrec has not been fitted on yet (cold or buffered)
        self.params = {"batch_size": self.batch_size, **slim_kwargs}

    def learn_one(self, event: dict) -> None:
        if event["type"] in POSITIVES:
            self.buffer.append((event["user_id"], event["item_id"], event["ts"] / 1000.0, 1.0))
            if len(self.buffer) >= self.batch_size:
                self.flush()

    def flush(self) -> None:
        """Fit the buffered positives (rtrec's incremental ``fit``)."""
        if self.buffer:
            self.model.fit(self.buffer, update_interaction=False, progress_bar=False)
            self.buffer = []
            self.fits += 1

    def recommend_one(self, user_id: str, k: int, exclude: AbstractSet[str]) -> list[str]:
        if not self.fits:
            return []
        model = self.model
        recs = model.recommend(user_id, top_k=k + len(exclude), filter_interacted=True)
        if model.user_ids.get_id(user_id) is None:
            # rtrec 0.2.7 returns its *internal* item indices for an unknown user (BaseModel.recommend's
            # cold-start branch skips the id mapping); map them back, or every such list is a miss.
            self.unknown_user_requests += 1
            recs = [model.item_ids.get(i) if isinstance(i, (int, np.integer)) else i for i in recs]
        return [i for i in recs if i not in exclude][:k]

    def stats(self) -> dict[str, Any]:
        return {"fits": self.fits, "unknown_user_requests": self.unknown_user_requests,
                "buffered_at_end": len(self.buffer)}


# ---------------------------------------------------------------------------------------- item-ctr

class ItemCTRMethod:
    """Independent click-through rate per item, ``(clicks + a) / (impressions + a + b)``.

    The same Beta prior as freshrec's item statistics by default, so on MIND it must agree with
    freshrec's click scores exactly: a cross-check of the pipeline's counting. Recommends the
    items with the highest smoothed CTR among those shown at least once.
    """

    name = "item-ctr"
    probabilistic = True

    def __init__(self, prior_clicks: float = 1.0, prior_impressions: float = 20.0) -> None:
        self.a = float(prior_clicks)
        self.b = float(prior_impressions)
        self.index = ItemIndex()
        self.clicks = np.zeros(0)
        self.shown = np.zeros(0)
        self.params = {"prior_clicks": self.a, "prior_impressions": self.b}

    def _idx(self, item: str) -> int:
        idx = self.index.add(item)
        self.clicks = grown(self.clicks, idx + 1, minimum=64)
        self.shown = grown(self.shown, idx + 1, minimum=64)
        return idx

    def learn_one(self, event: dict) -> None:
        etype = event["type"]
        if etype == "impression":
            for item in event["item_ids"]:
                idx = self._idx(item)  # may grow the arrays: index them after
                self.shown[idx] += 1
        elif etype == "click":
            idx = self._idx(event["item_id"])
            self.clicks[idx] += 1

    def _ctr(self) -> np.ndarray:
        n = len(self.index)
        return (self.clicks[:n] + self.a) / (self.shown[:n] + self.a + self.b)

    def recommend_one(self, user_id: str, k: int, exclude: AbstractSet[str]) -> list[str]:
        n = len(self.index)
        scores = np.where(self.shown[:n] > 0, self._ctr(), -np.inf)
        return [self.index.ids[i] for i in top_k_indices(scores, k, self.index.indices(exclude))]

    def score_one(self, user_id: str, item_ids: Sequence[str]) -> list[float]:
        get = self.index.get
        out = []
        for item in item_ids:
            i = get(item)
            c, s = (self.clicks[i], self.shown[i]) if i is not None else (0.0, 0.0)
            out.append(float((c + self.a) / (s + self.a + self.b)))
        return out


# ---------------------------------------------------------------------------------------- registry

METHODS: dict[str, Callable[..., Any]] = {
    "freshrec": FreshrecMethod,
    "popularity": PopularityMethod,
    "covis20": CoVisitationMethod,
    "funkmf": FunkMFMethod,
    "rtrec": RtrecMethod,
    "item-ctr": ItemCTRMethod,
}
DEFAULT_METHODS = ("freshrec", "popularity", "covis20", "funkmf", "rtrec")


def _parse_value(raw: str) -> Any:
    text = raw.strip()
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    for cast in (int, float):
        try:
            return cast(text.replace("_", ""))
        except ValueError:
            pass
    return text


def parse_method_specs(text: str) -> list[str]:
    """Split ``--methods`` (``a,b:x=1,y=2,c``) into specs (``a``, ``b:x=1,y=2``, ``c``).

    A comma-separated token with ``=`` and no ``:`` is one more parameter of the method before it.
    """
    specs: list[str] = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        if "=" in token and ":" not in token:
            if not specs:
                raise ValueError(f"method parameter {token!r} comes before any method name")
            specs[-1] += "," + token
        else:
            specs.append(token)
    return specs


def split_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``name:key=value,...`` -> (name, params)."""
    name, _, rest = spec.strip().partition(":")
    params: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, raw = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"method {name!r}: parameter {part!r} is not key=value")
        params[key.strip()] = _parse_value(raw)
    return name.strip().lower(), params


def method_label(spec: str) -> str:
    """Display name: ``name`` or ``name(key=value,...)``."""
    name, params = split_spec(spec)
    return name if not params else f"{name}({','.join(f'{k}={v}' for k, v in params.items())})"


def make_method(spec: str, settings: Settings | None = None) -> Any:
    """A new method from ``name[:key=value,...]`` (see :data:`METHODS`); errors are explicit."""
    name, params = split_spec(spec)
    factory = METHODS.get(name)
    if factory is None:
        raise MethodError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    if name == "freshrec" and settings is not None:
        params = {"settings": settings, **params}
    try:
        method = factory(**params)
    except TypeError as exc:
        raise MethodError(f"method {name!r}: bad parameters {sorted(params)}: {exc}") from None
    method.name = method_label(spec)
    return method
