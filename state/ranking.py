"""The learning recommender: online MF + HNSW and content retrieval, a River click model to rank.

Every interaction teaches three models as it arrives (:meth:`LearningRecommender.learn_event`):

* **Online MF** (:class:`~freshrec.state.embeddings.OnlineMF`): clicks, conversions and ratings
  are positives with configurable weights (``FRESHREC_WEIGHT_*``); a dismissal, a rating below
  ``rating_positive_min`` and every shown item of an impression are negatives (the impression's
  with a small weight: the clicked one is learned as a positive right after).
* **Click model** (:class:`~freshrec.state.clickmodel.ClickModel`): an impression's shown items are
  held, with their features as computed when shown, until ``click_window_s`` of event time has
  passed; each is then learned once, labelled by whether a click with the same ``request_id``
  named it. A positive without an impression (a ratings log) is learned against the candidates
  of the list the worker last published for the user, when the engaged item was among them: it
  is a 1 and a few candidates drawn at random from that candidate set are 0s. Positives the first
  stage did not retrieve are not learned by the ranker (their features are atypically low, and
  learning them turned every weight negative, measured). Measured alternatives on MovieLens 100K
  (HitRate@10, same protocol as ``freshrec eval``): random candidate negatives 0.190; half of them
  from the top of the user's ranking (hard negatives) 0.153; pairwise (RankNet) updates 0.180.
* **Indices**: the MF item vectors changed by the events are re-indexed in one hnswlib batch per
  ``index_refresh_ms`` (:class:`~freshrec.state.ann.IndexRefresher`); catalogue upserts go to the
  content index (:mod:`freshrec.state.content`) the same way.

Ranking a user (:meth:`LearningRecommender.recommend_one`) has two stages:

1. **Candidates**: ANN over MF item vectors from the user's vector (new users: the item biases,
   i.e. popularity), co-visitation neighbours of the user's recent items, trending, content-index
   neighbours of the user's content profile, and the newest catalogue items.
2. **Ranking**: the click model's log-odds over the features in
   :data:`~freshrec.state.clickmodel.FEATURES`, computed for all candidates at once.

Then seen and deleted items are excluded, at most ``diversity_max_share`` of the list comes from
one category, and ``explore_share`` of the slots go to fresh items chosen by Thompson sampling on
their CTR (Beta posterior), so a new item is shown, and can earn clicks, before anyone clicked it.
The ranking uses exact MF scores for every candidate, so an index a refresh behind only delays
*retrieval* of an item whose vector just changed, never misorders what was retrieved.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from freshrec.settings import Settings
from freshrec.state import popularity as pop
from freshrec.state.ann import IndexRefresher, ItemIndex
from freshrec.state.catalogue import Catalogue
from freshrec.state.clickmodel import COL, N_FEATURES, ClickModel, logit
from freshrec.state.content import ContentIndex
from freshrec.state.embeddings import OnlineMF
from freshrec.state.features import FeatureStore
from freshrec.state.recommender import covis_scores
from freshrec.state.trending import Trending
from freshrec.state.users import recent_items

DAY_MS = 86_400_000.0
RECENT_N = 20  # recent items that drive co-visitation and the content profile
NEIGHBOURS_N = 50  # co-visitation neighbours per recent item
PUBLISHED_KEEP = 20_000  # users whose last published candidates are kept (click-model negatives)
CANDIDATE_SAMPLE = 32  # candidates remembered per published list, as negatives for the next positive
PENDING_MAX = 200_000  # impressions waiting for their clicks (oldest learned early past this)
FRESH_KEEP = 1000  # newest catalogue items remembered for candidates and exploration
ITEM_CACHE_MS = 10_000  # event time an item's cached features are reused
RECENT_ANN_CANDIDATES = 50  # candidates from the MF index near the user's recent items
EXPLORE_POOL = 200  # newest fresh, little-seen items exploration draws from


@dataclass
class UserContext:
    """What ranking needs of one user, computed once per list."""

    user_id: str
    seen: Any
    recent: list[str]
    covis: dict[str, float]
    categories: dict[str, float]  # category -> share of the user's recent history
    profile: np.ndarray | None  # content profile


@dataclass
class PendingImpression:
    user_id: str
    ts: int
    items: list[str]
    X: np.ndarray
    clicked: set[str]


class LearningRecommender:
    """Two-stage recommender that learns from every event (see the module docstring)."""

    name = "learning"
    version = "1"

    def __init__(self, settings: Settings, features: FeatureStore, catalogue: Catalogue,
                 trending: Trending) -> None:
        s = self.settings = settings
        self.features = features
        self.catalogue = catalogue
        self.trending = trending
        self.mf = OnlineMF(n_factors=s.mf_factors, lr=s.mf_lr, seed=s.seed)
        self.index = self._new_index()
        self.content = ContentIndex()
        self.clicks = ClickModel(lr=s.click_lr)
        self.pending: OrderedDict[str, PendingImpression] = OrderedDict()  # request_id -> impression
        # user -> (candidate ids, sampled candidate ids, their features, sorted MF and co-visitation
        # scores of all candidates) of the last published list
        self.published: OrderedDict[str, tuple[frozenset, list[str], np.ndarray, tuple]] = OrderedDict()
        self.fresh: OrderedDict[str, int] = OrderedDict()  # item -> upsert event time, newest last
        self.rng = np.random.default_rng(s.seed)
        self._item_cache: dict[str, tuple[float, float, float]] = {}
        self._trend_rank: dict[str, float] = {}
        self._max_pop = 1.0
        self._cache_since = 0
        self._explore: tuple[list[str], np.ndarray, np.ndarray] = ([], np.empty(0), np.empty(0))
        self.last_index_refresh_ms = 0
        self.counters: Counter[str] = Counter()

    @property
    def covis(self):  # the merged co-visitation view lives in the feature store (rebuilt on recovery)
        return self.features.covis

    @covis.setter
    def covis(self, value) -> None:  # Pipeline.rebuild assigns it; the store already holds it
        pass

    def _new_index(self) -> ItemIndex:
        # batched inserts on 2 threads (hnswlib releases the GIL; the loop waits for them anyway);
        # stale slots of re-inserted items may reach 3x the live ones before a (blocking) rebuild
        return ItemIndex(self.mf.index_dim, num_threads=2, max_stale_ratio=3.0)

    def _refresher(self) -> IndexRefresher:
        # min_drift 0.2: sampled negatives nudge nearly every item a little; re-indexing only the
        # items that moved 20% cut upserts per event from 0.85 to 0.34 on MovieLens 100K at the
        # same HitRate@10 (state/ann.py), and ranking uses exact MF scores anyway
        return IndexRefresher(self.mf, self.index, keep=lambda i: not self.catalogue.is_deleted(i),
                              max_batch=self.settings.index_batch_max, min_drift=0.2)

    # ------------------------------------------------------------------ learning
    def _weight(self, event: dict) -> float:
        """MF weight of an engagement: > 0 positive, < 0 negative, 0 ignored."""
        s, etype = self.settings, event["type"]
        if etype == "click":
            return s.weight_click
        if etype == "conversion":
            return s.weight_conversion
        if etype == "rating":
            return s.weight_rating if event["value"] >= s.rating_positive_min else -s.weight_dismiss
        if etype == "dismiss":
            return -s.weight_dismiss
        return 0.0

    def learn_event(self, event: dict, user_row: dict | None) -> None:
        """Learn one new interaction (call before the feature store applies it, once per event).

        ``user_row`` is the user's row before the event, so the click model's features are those
        the user had when the item was shown.
        """
        etype = event["type"]
        user = event["user_id"]
        if etype == "user_delete":
            self.forget_user(user)
            return
        cache = self._item_cache
        if etype == "impression":
            self._learn_impression(event, user_row)
            for item in event["item_ids"]:  # their CTR changes with this event: computed afresh
                cache.pop(item, None)
            return
        item = event["item_id"]
        w = self._weight(event)
        request_id = event.get("request_id")
        imp = self.pending.get(request_id) if request_id else None
        if imp is not None and imp.user_id == user and item in imp.items:
            if w > 0:
                imp.clicked.add(item)
        elif w > 0:
            self._learn_against_published(user, user_row, item)
        if w > 0:
            self.mf.learn_one(user, item, w)
        elif w < 0:
            self.mf.learn_negative(user, item, -w)
        cache.pop(item, None)  # after any feature computation above: the event changes the item's counts

    def _learn_impression(self, event: dict, user_row: dict | None) -> None:
        user, items = event["user_id"], list(dict.fromkeys(event["item_ids"]))
        ctx = self.context(user, user_row)
        X = self.feature_matrix(ctx, items, positions=[event["item_ids"].index(i) for i in items])
        rid = event["request_id"]
        if rid in self.pending:  # a resent slate: learn the earlier one now
            self._finish(self.pending.pop(rid))
        self.pending[rid] = PendingImpression(user, event["ts"], items, X, set())
        while len(self.pending) > PENDING_MAX:
            self._finish(self.pending.popitem(last=False)[1])
        if self.settings.weight_impression > 0:
            self.mf.learn_negatives(user, items, self.settings.weight_impression)

    def _finish(self, imp: PendingImpression) -> None:
        for item, row in zip(imp.items, imp.X.tolist()):
            self.clicks.learn_one(row, item in imp.clicked)
        self.counters["click_model_examples"] += len(imp.items)

    def finish_impressions(self, stream_time_ms: int) -> int:
        """Learn the impressions whose click window has passed (event time); returns how many."""
        horizon = stream_time_ms - self.settings.click_window_s * 1000.0
        done = 0
        while self.pending:
            rid, imp = next(iter(self.pending.items()))
            if imp.ts > horizon:
                break
            del self.pending[rid]
            self._finish(imp)
            done += 1
        return done

    def _learn_against_published(self, user: str, user_row: dict | None, item: str) -> None:
        shown = self.published.get(user)
        if shown is None:
            return
        candidates, items, X, reference = shown
        if item not in candidates:
            # learning a positive the first stage did not retrieve would teach the ranker that
            # low feature values mean engagement (measured: the weights turn negative)
            self.counters["positives_not_retrieved"] += 1
            return
        self.counters["positives_retrieved"] += 1
        pos_row = self.feature_matrix(self.context(user, user_row), [item], reference=reference)[0]
        negatives = [p for p, i in enumerate(items) if i != item]
        n_neg = self.settings.click_negatives
        if len(negatives) > n_neg:
            negatives = self.rng.choice(negatives, n_neg, replace=False).tolist()
        self.clicks.learn_one(pos_row, 1)
        for p in negatives:
            self.clicks.learn_one(X[p], 0)
        self.counters["click_model_examples"] += 1 + len(negatives)

    def forget_user(self, user_id: str) -> None:
        """``user_delete``: the user's vector, remembered list and pending impressions go."""
        self.mf.forget_user(user_id)
        self.published.pop(user_id, None)
        for rid in [rid for rid, imp in self.pending.items() if imp.user_id == user_id]:
            del self.pending[rid]

    def observe_catalogue(self, event: dict) -> None:
        """An applied ``item_upsert`` / ``item_delete``."""
        item = event["item_id"]
        if event["type"] == "item_delete":
            self.content.delete(item)
            self.index.mark_deleted(item)
            self.fresh.pop(item, None)
            return
        row = self.catalogue.rows.get(item) or event
        self.content.upsert(item, row)
        self.fresh.pop(item, None)
        self.fresh[item] = event["ts"]
        while len(self.fresh) > FRESH_KEEP:
            self.fresh.popitem(last=False)

    # ------------------------------------------------------------------ periodic work
    def refresh(self, now_ms: int, stream_time_ms: int, force: bool = False) -> dict[str, Any]:
        """Work done on an interval, never per event: re-index changed vectors, flush the content
        index, refresh item-level feature caches, learn impressions whose window passed."""
        out: dict[str, Any] = {"impressions_learned": self.finish_impressions(stream_time_ms)}
        self.refresh_caches(force=force)
        if force or now_ms - self.last_index_refresh_ms >= self.settings.index_refresh_ms:
            self.last_index_refresh_ms = now_ms
            out.update(self.refresh_index())
        return out

    def refresh_caches(self, force: bool = True) -> None:
        """Item-level features (CTR, popularity, trending rank) are read from a cache instead of
        being recomputed per candidate. An event on an item drops its entry (:meth:`learn_event`:
        its CTR just changed; with a stale CTR the click model's AUC on MIND fell from 0.657 to
        0.650), and the whole cache is emptied when ``ITEM_CACHE_MS`` of event time have passed
        (popularity and trending decay without events), so a hot item's features are computed
        once per event on it, not once per user."""
        now = self.features.stream_time_ms
        if force or now - self._cache_since >= ITEM_CACHE_MS:
            self._item_cache.clear()
            self._cache_since = now
        top = self.trending.global_list
        n = len(top) or 1
        self._trend_rank = {item: 1.0 - pos / n for pos, (item, _s) in enumerate(top)}
        self._max_pop = max(top[0][1], 1e-9) if top else 1.0
        self._refresh_explore_pool()

    def refresh_index(self) -> dict[str, int]:
        """Re-index the MF vectors changed since the last refresh and flush the content index
        (one hnswlib batch each); rebuild the MF index when stale slots pile up."""
        stats = self._refresher().refresh()
        if stats.needs_rebuild:
            self._refresher().rebuild()
        self.counters["index_refreshes"] += 1
        return {"indexed": stats.indexed, "content_indexed": self.content.flush()}

    # ------------------------------------------------------------------ features
    def context(self, user_id: str, user_row: dict | None) -> UserContext:
        recent = recent_items(user_row, RECENT_N)
        seen = user_row["seen"] if user_row and not user_row.get("deleted") else {}
        cats: Counter[str] = Counter()
        history = [e[0] for e in user_row["h"]] if user_row and user_row.get("h") else []
        category = self.catalogue.category
        for item in history:
            c = category(item)
            if c:
                cats[c] += 1
        total = len(history) or 1
        profile = None
        if recent:
            profile = self.content.profile(recent, [1.0 / (1 + r) for r in range(len(recent))])
        return UserContext(user_id, seen, recent, covis_scores(self.covis, recent, NEIGHBOURS_N),
                           {c: n / total for c, n in cats.items()}, profile)

    def _item_features(self, item: str, now_ms: int) -> tuple[float, float, float, float, str | None]:
        """(ctr logit, popularity, trending, freshness, category) of an item, cached until the
        next refresh (item-level features do not depend on the user)."""
        cached = self._item_cache.get(item)
        if cached is None:
            s = self.settings
            stats = self.features.item_stats
            c = logit(pop.ctr(stats.get(item), s.ctr_prior_clicks, s.ctr_prior_impressions))
            p = math.log1p(stats.popularity(item, now_ms)) / math.log1p(self._max_pop)
            row = self.catalogue.rows.get(item)
            created = row.get("created_at") if row else None
            f = math.exp(-max(0.0, now_ms - created) / DAY_MS) if created else 0.0
            cat = row.get("category") if row else None
            cached = self._item_cache[item] = (c, p, self._trend_rank.get(item, 0.0), f, cat)
        return cached

    def feature_matrix(self, ctx: UserContext, items: Sequence[str],
                       positions: Sequence[int] | None = None,
                       reference: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """Rows of :data:`~freshrec.state.clickmodel.FEATURES` for ``items`` shown to ``ctx``'s user.

        The rank features are relative to ``reference`` (sorted MF and co-visitation scores of the
        set the items compete in), by default to ``items`` themselves (a candidate set, a slate).
        """
        n = len(items)
        X = np.zeros((n, N_FEATURES), dtype=np.float64)
        if n == 0:
            return X
        now = self.features.stream_time_ms
        mf_rows = self.mf.rows_of(items)
        X[:, COL["mf"]] = self.mf.score_rows(ctx.user_id, mf_rows)
        covis_get, cats_get = ctx.covis.get, ctx.categories.get
        cache_get, item_features = self._item_cache.get, self._item_features
        rows = []
        for item in items:
            c, p, t, f, cat = cache_get(item) or item_features(item, now)
            rows.append((covis_get(item, 0.0), c, p, t, f, cats_get(cat, 0.0)))
        X[:, COL["covis"]:COL["category"] + 1] = rows
        X[:, COL["covis"]] = np.log1p(20.0 * X[:, COL["covis"]])
        X[:, COL["content"]] = self.content.similarity(ctx.profile, items)
        if ctx.recent:
            X[:, COL["mf_recent"]] = self.mf.item_similarity(
                items, ctx.recent, [1.0 / (1 + r) for r in range(len(ctx.recent))], mf_rows)
        if positions is not None:
            X[:, COL["position"]] = np.log1p(np.asarray(positions, dtype=np.float64))
        ref_mf, ref_cv = reference if reference is not None else self.reference(X)
        X[:, COL["mf_rank"]] = np.searchsorted(ref_mf, X[:, COL["mf"]], side="left") / max(len(ref_mf), 1)
        X[:, COL["covis_rank"]] = np.searchsorted(ref_cv, X[:, COL["covis"]], side="left") / max(len(ref_cv), 1)
        return X

    @staticmethod
    def reference(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sorted MF and co-visitation scores of a feature matrix: what rank features refer to."""
        return np.sort(X[:, COL["mf"]]), np.sort(X[:, COL["covis"]])

    # ------------------------------------------------------------------ ranking
    def candidates(self, ctx: UserContext) -> list[str]:
        s = self.settings
        seen, deleted = ctx.seen, self.catalogue.deleted
        out: dict[str, None] = {}
        if ctx.covis:
            for item, _ in heapq.nlargest(NEIGHBOURS_N * 2, ctx.covis.items(), key=lambda kv: kv[1]):
                out[item] = None
        for item, _ in self.index.query(self.mf.query_vector(ctx.user_id), s.ann_candidates, exclude=seen):
            out[item] = None
        if ctx.recent and RECENT_ANN_CANDIDATES > 0:  # items near the user's recent items in MF space
            q = self.mf.mean_item_vector(ctx.recent, [1.0 / (1 + r) for r in range(len(ctx.recent))])
            if q is not None:
                for item, _ in self.index.query(np.append(q, np.float32(0.0)), RECENT_ANN_CANDIDATES, exclude=seen):
                    out[item] = None
        if ctx.profile is not None and s.content_candidates > 0:
            for item, _ in self.content.query(ctx.profile, s.content_candidates, exclude=seen):
                out[item] = None
        for item, _ in self.trending.global_list:
            out[item] = None
        if s.fresh_candidates > 0:
            horizon = self.features.stream_time_ms - s.fresh_window_s * 1000.0
            for n, (item, ts) in enumerate(reversed(self.fresh.items())):
                if n >= s.fresh_candidates or ts < horizon:
                    break
                out[item] = None
        return [i for i in out if i not in seen and i not in deleted]

    def _refresh_explore_pool(self) -> None:
        """The items exploration draws from, with their Beta posteriors on CTR: the newest fresh
        items (upserted within ``fresh_window_s``) still under ``explore_max_views``. Computed
        once per refresh and bounded by ``EXPLORE_POOL``, so a list pays for a few hundred draws."""
        s = self.settings
        horizon = self.features.stream_time_ms - s.fresh_window_s * 1000.0
        stats = self.features.item_stats
        deleted = self.catalogue.deleted
        pool, a, b = [], [], []
        for item, ts in reversed(self.fresh.items()):
            if ts < horizon or len(pool) >= EXPLORE_POOL:
                break
            if item in deleted:
                continue
            row = stats.get(item)
            counts = row["c"] if row else {}
            if sum(counts.values()) >= s.explore_max_views:
                continue
            imps = counts.get("impression", 0)
            clicks = min(counts.get("click", 0), imps)  # clicks without logged impressions say nothing of CTR
            pool.append(item)
            a.append(s.ctr_prior_clicks + clicks)
            b.append(s.ctr_prior_impressions + imps - clicks)
        self._explore = (pool, np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))

    def _thompson(self, n: int, exclude: set[str], seen) -> list[str]:
        """``n`` items of the exploration pool by Thompson sampling (one Beta draw per item)."""
        pool, a, b = self._explore
        if not pool:
            return []
        draws = self.rng.beta(a, b)
        out = []
        for j in np.argsort(-draws).tolist():
            item = pool[j]
            if item not in exclude and item not in seen:
                out.append(item)
                if len(out) == n:
                    break
        return out

    def rank(self, user_id: str, user_row: dict | None, k: int,
             remember: bool = False) -> list[tuple[str, float]]:
        """The user's top ``k`` ``(item_id, click probability)``; ``remember`` keeps the list and its
        features as the user's last published list (hard negatives for the click model)."""
        s = self.settings
        ctx = self.context(user_id, user_row)
        items = self.candidates(ctx)
        if not items:
            return []
        X = self.feature_matrix(ctx, items)
        logits = self.clicks.logits(X)
        order = np.argsort(-logits, kind="stable")
        n_explore = int(round(k * s.explore_share)) if s.explore_share > 0 else 0
        cap = k if s.diversity_max_share >= 1.0 else max(1, math.ceil(k * s.diversity_max_share))
        cache = self._item_cache  # filled for every candidate by feature_matrix
        per_cat: Counter[str] = Counter()
        picked: list[int] = []
        skipped: list[int] = []
        for j in order.tolist():
            cat = cache[items[j]][4]
            if cat is not None and per_cat[cat] >= cap:
                skipped.append(j)
                continue
            per_cat[cat] += 1
            picked.append(j)
            if len(picked) == k:
                break
        if len(picked) < k:  # not enough variety among the candidates: fill past the cap
            picked.extend(skipped[: k - len(picked)])
        chosen = {items[j] for j in picked}
        explore: list[str] = []
        if n_explore:
            explore = self._thompson(n_explore, chosen, ctx.seen)
        keep = picked[: k - len(explore)]
        out = [(items[j], float(logits[j])) for j in keep]
        if explore:
            ex_X = self.feature_matrix(ctx, explore, reference=self.reference(X))
            out.extend(zip(explore, self.clicks.logits(ex_X).tolist()))
            self.counters["explored"] += len(explore)
        probs = 1.0 / (1.0 + np.exp(-np.clip([sc for _, sc in out], -30, 30)))
        result = [(item, round(float(p), 6)) for (item, _), p in zip(out, probs)]
        if remember:
            sample = self.rng.choice(len(items), min(len(items), CANDIDATE_SAMPLE), replace=False)
            ref = self.reference(X)
            self.published[user_id] = (frozenset(items), [items[j] for j in sample.tolist()],
                                       X[sample].astype(np.float32),
                                       (ref[0].astype(np.float32), ref[1].astype(np.float32)))
            self.published.move_to_end(user_id)
            while len(self.published) > PUBLISHED_KEEP:
                self.published.popitem(last=False)
        return result

    def recommend_one(self, user_id: str, user_row: dict | None, k: int) -> list[tuple[str, float]]:
        return self.rank(user_id, user_row, k)

    def publish_one(self, user_id: str, user_row: dict | None, k: int) -> list[tuple[str, float]]:
        """The list to publish; it is remembered as what the user was shown."""
        return self.rank(user_id, user_row, k, remember=True)

    def score_items(self, user_id: str, user_row: dict | None, items: Sequence[str],
                    positions: Sequence[int] | None = None) -> np.ndarray:
        """Click probabilities of ``items`` for the user (e.g. the items of an impression)."""
        ctx = self.context(user_id, user_row)
        return self.clicks.predict_proba_many(self.feature_matrix(ctx, items, positions))

    def similar_one(self, item_id: str, k: int) -> list[tuple[str, float]]:
        """Co-visited items first, then nearest items by MF vector, then by content (new items)."""
        deleted = self.catalogue.deleted
        out: dict[str, float] = {}
        for i, sc in self.covis.neighbours(item_id, k + 10):
            if i not in deleted and i != item_id:
                out[i] = sc
        if len(out) < k and self.mf.knows_item(item_id):
            q = np.append(self.mf.item_vector(item_id), np.float32(0.0))
            for i, sc in self.index.query(q, k + 1, exclude={item_id, *out}):
                out.setdefault(i, 0.0)
        if len(out) < k:
            v = self.content.vector(item_id)
            if v is not None:
                for i, sc in self.content.query(v, k + 1, exclude={item_id, *out}):
                    out.setdefault(i, 0.0)
        return [(i, sc) for i, sc in out.items() if i not in deleted][:k]

    # ------------------------------------------------------------------ checkpoints
    def to_state(self) -> dict:
        """Everything but the hnswlib graph (saved beside, see :meth:`save_index`)."""
        return {"mf": self.mf.to_state(), "content": self.content.to_state(), "clicks": self.clicks,
                "pending": self.pending, "published": self.published, "fresh": self.fresh,
                "rng": self.rng.bit_generator.state, "counters": dict(self.counters),
                "last_index_refresh_ms": self.last_index_refresh_ms}

    def load_state(self, state: dict, index: ItemIndex | None) -> None:
        self.mf = OnlineMF.from_state(state["mf"])
        self.content = ContentIndex.from_state(state["content"])
        self.clicks = state["clicks"]
        self.pending = state["pending"]
        self.published = state["published"]
        self.fresh = state["fresh"]
        self.rng.bit_generator.state = state["rng"]
        self.counters = Counter(state["counters"])
        self.last_index_refresh_ms = state["last_index_refresh_ms"]
        self.refresh_caches()
        if index is None:  # no graph saved: rebuild it from the vectors
            index = self._new_index()
            self.index = index
            self._refresher().rebuild([i for i in self.mf.item_ids if not self.catalogue.is_deleted(i)])
        else:
            self.index = index
