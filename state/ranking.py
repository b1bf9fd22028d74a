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
  is a 1 and a few candidates drawn at random from that candidate set are 0s, all featurised in
  the user's context at that moment (a train/serve skew otherwise). Positives the first
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

**Cost.** :meth:`LearningRecommender.publish_many` ranks a batch of users: the ANN queries of
all of them go to hnswlib in one call per index (:meth:`~freshrec.state.ann.ItemIndex.query_many`,
on ``ANN_THREADS`` without the GIL), asking for ``k`` plus the user's seen count and filtering after
(instead of an exclusion set per query). Candidates are dense int codes of an :class:`ItemTable`
from retrieval to the feature matrix, so item-level features, content vectors, categories and
MF rows are gathered with fancy indexing instead of a few dict lookups per candidate. The
second stage (each list's top k, the category cap, exploration, probabilities) runs once for the
batch as well (:meth:`LearningRecommender._second_stage`): 0.55 -> 0.40 ms a list with the exact
scans of small indices, 0.96 -> 0.83 ms caught up with a live stream (README, session 13). Measured
in process on the synthetic stream (20k users, 10k items, batches of 2000 events; CPU time, the
old and new code side by side in one process on the shared 2-core machine): a published list
2.4 -> 1.0 ms with chunks of 64 users; per chunk size 1: 1.28, 8: 1.24, 16: 1.03, 32: 1.02,
64: 0.94, 128: 0.98, 256: 0.87 ms (little gain past 64, and a larger chunk delays the first
list of a flush). Learning an event costs about the same as before (~230 µs CPU, mostly the
impression's feature rows, the MF step and the feature store): the context of a user is still
built with a dict for co-visitation (tens of entries per user on that stream, where numpy's
per-call overhead loses, measured).
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections import Counter, OrderedDict
from dataclasses import dataclass
from itertools import repeat
from contextlib import contextmanager
from typing import Any, Callable, Collection, Iterator, Sequence

import numpy as np

from freshrec.settings import Settings
from freshrec.state.ann import IndexRefresher, ItemIndex
from freshrec.state.arrays import grown
from freshrec.state.catalogue import Catalogue
from freshrec.state.clickmodel import COL, N_FEATURES, ClickModel
from freshrec.state.content import ContentIndex
from freshrec.state.embeddings import OnlineMF
from freshrec.state.online_metrics import OnlineClickMetrics
from freshrec.state.features import FeatureStore
from freshrec.state.recommender import covis_scores_of
from freshrec.state.trending import Trending
from freshrec.state.users import recent_items

log = logging.getLogger("freshrec.ranking")

DAY_MS = 86_400_000.0
RECENT_N = 20  # recent items that drive co-visitation and the content profile
NEIGHBOURS_N = 50  # co-visitation neighbours per recent item
PUBLISHED_KEEP = 20_000  # users whose last published candidates are kept (click-model negatives)
CANDIDATE_SAMPLE = 32  # candidates remembered per published list, as negatives for the next positive
PENDING_MAX = 200_000  # impressions waiting for their clicks (oldest learned early past this)
FINISH_MAX = 2_000  # impressions learned per refresh at most (about 0.1 s)
FRESH_KEEP = 1000  # newest catalogue items remembered for candidates and exploration
ITEM_CACHE_MS = 10_000  # event time an item's cached features are reused
RECENT_ANN_CANDIDATES = 50  # candidates from the MF index near the user's recent items
EXPLORE_POOL = 200  # newest fresh, little-seen items exploration draws from
# hnswlib threads of a batch of list queries. One: a batch's queries go in ~6 calls per index
# (grouped by seen count) of ~10 rows each, and hnswlib starts its threads at every call; with 2,
# a list took 5% more wall time and 3% more CPU (README, session 16)
ANN_THREADS = 1
RECENT_WEIGHTS = 1.0 / (1.0 + np.arange(RECENT_N))  # weight of the r-th most recent item
RECENT_WEIGHTS32 = RECENT_WEIGHTS.astype(np.float32)


@dataclass
class UserContext:
    """What ranking needs of one user, computed once per list (items as :class:`ItemTable` codes)."""

    user_id: str
    seen: Any
    recent: list[str]
    covis: dict[str, float]  # co-visitation neighbours of the recent items -> score (a slate's context)
    categories: np.ndarray | None  # category code -> share of the user's history (None: no history)
    profile: np.ndarray | None  # content profile
    recent_q: np.ndarray | None  # weighted mean MF vector of the recent items
    covis_scores: CovisScores | None = None  # a list's context: the same scores as codes and arrays
    recent_codes: np.ndarray | None = None  # a list's context: the recent items' codes


@dataclass
class CovisScores:
    """Co-visitation scores of a user's candidates-to-be (:func:`~freshrec.state.recommender.covis_scores` of the recent items)
    as arrays: ``codes`` sorted, ``values`` their scores, ``top`` the codes of the strongest in the
    order :func:`~freshrec.state.covisitation.strongest` gives (ties: first met)."""

    codes: np.ndarray
    values: np.ndarray
    top: np.ndarray

    def lookup(self, codes: np.ndarray) -> np.ndarray:
        """The score of each of ``codes`` (0.0 for codes without one), as ``dict.get(id, 0.0)``."""
        return _sorted_lookup(self.codes, self.values, codes)


def _search(keys: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``query``, its position among the sorted, non-empty ``keys`` (clipped to the
    last) and whether it is there."""
    pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return pos, keys[pos] == query


def _sorted_lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """The value of each of ``query`` among the sorted, non-empty ``keys`` (0.0 where absent)."""
    pos, found = _search(keys, query)
    return np.where(found, values[pos], 0.0)


def _member(query: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Boolean mask: which of ``query`` are among the non-empty ``values`` (one sort of the
    values, a binary search per query: a batch's seen items are few next to its candidates,
    where ``np.isin``'s lookup table spans every (user, code) key of the batch)."""
    return _search(np.sort(values), query)[1]


def _rank_within(values: np.ndarray, owner: np.ndarray, n_ref: np.ndarray, is_ref: np.ndarray) -> np.ndarray:
    """For each row, the share of its group's reference rows (``is_ref``; ``n_ref`` per group)
    whose value is strictly below its own: ``np.searchsorted(np.sort(ref), v, "left") /
    len(ref)`` per group (``owner``: each row's group), for all groups in one sort.

    Each row becomes one int, (group, rank of its value among all values, row), and one sort
    of those puts every group's rows in value order; the counts are then prefix sums. (The
    searches into a sorted array this replaced, :func:`_rank_within_by_search`, cost twice as
    much: ~5 ms for 64 lists' ~18k candidates, two calls per batch of lists.)"""
    n = len(values)
    if n == 0:
        return np.zeros(0)
    order = np.argsort(values)
    ordered = values[order]
    bits = max(1, (n - 1).bit_length())
    if np.isnan(ordered[-1]) or (len(n_ref) * n) >> (62 - bits):  # NaN (sorted last), or no room in an int64
        return _rank_within_by_search(values, owner, n_ref, is_ref)
    rank = np.empty(n, dtype=np.int64)  # equal values, equal ranks
    rank[order] = np.concatenate(([0], np.cumsum(ordered[1:] != ordered[:-1])))
    pos = np.arange(n, dtype=np.int64)
    key = np.sort(((owner.astype(np.int64) * np.int64(n) + rank) << bits) | pos)
    rows = key & ((1 << bits) - 1)
    group_rank = key >> bits
    ref = is_ref[rows]
    refs_before = np.cumsum(ref) - ref
    first = np.ones(n, dtype=bool)
    first[1:] = group_rank[1:] != group_rank[:-1]  # first row of a run of equal values in a group
    run_start = np.maximum.accumulate(np.where(first, pos, 0))
    group = owner[rows]
    first[1:] = group[1:] != group[:-1]  # first row of a group
    group_start = np.maximum.accumulate(np.where(first, pos, 0))
    out = np.empty(n)
    out[rows] = (refs_before[run_start] - refs_before[group_start]) / np.maximum(n_ref[group], 1)
    return out


def _rank_within_by_search(values: np.ndarray, owner: np.ndarray, n_ref: np.ndarray,
                           is_ref: np.ndarray) -> np.ndarray:
    """:func:`_rank_within` by searching each row's (group, value rank) key among the sorted
    keys of the reference rows (values become their rank among all values, ties equal, so a
    key is one sortable int). The fallback for NaN values and for sizes past an int64."""
    _, ranks = np.unique(values, return_inverse=True)
    span = np.int64(len(values) + 1)
    key = owner.astype(np.int64) * span + ranks.reshape(-1)
    ref_keys = np.sort(key[is_ref])
    below = np.searchsorted(ref_keys, key, side="left") - np.searchsorted(ref_keys, owner * span, side="left")
    return below / np.maximum(n_ref[owner], 1)


@dataclass
class Slate:
    """A slate to featurise at the end of its batch, with what it needs of the moment it was shown."""

    ctx: UserContext
    codes: np.ndarray
    positions: Sequence[int] | None  # None: not shown (candidates), position feature 0
    mf_rows: np.ndarray  # the items' MF rows then (-1: unknown then)
    user_vector: np.ndarray  # the user's MF vector then (zeros: unknown)
    mean_bias: float  # the MF model's mean item bias then (what unknown items score)
    n_reference: int | None = None  # rank features refer to the first rows only (default: all)
    reference: tuple[np.ndarray, np.ndarray] | None = None  # or to these sorted MF and co-visitation scores


@dataclass
class PendingImpression:
    user_id: str
    ts: int
    items: list[str]
    X: np.ndarray | None  # None until its batch is featurised (LearningRecommender.learning_batch)
    clicked: set[str]


MAX_QUEUED_INVALIDATIONS = 1 << 16  # ItemTable applies its queued invalidations at this many, read or not


class ItemTable:
    """Dense int codes for the items the ranker meets, and per-item arrays indexed by code.

    A list scores a few hundred candidates; looking each one up in several dicts per feature
    (MF row, cached item features, co-visitation, content vector, category) was about half the
    cost of a list (profiled: ``dict.get`` first). Here a candidate is one int from retrieval to
    the feature matrix: hnswlib labels map to codes through :class:`LabelCodes` and features are
    gathered by fancy indexing. ``describe(item) -> (content vector or None, category, deleted)``
    fills a new code; :meth:`update` refreshes it after a catalogue change. Derived state only:
    a loaded checkpoint starts a new table, filled as items are met again.
    """

    def __init__(self, content_dim: int,
                 describe: Callable[[str], tuple[np.ndarray | None, str | None, bool, int | None]],
                 capacity: int = 1024) -> None:
        self.describe = describe
        self.code: dict[str, int] = {}
        self.categories: dict[str, int] = {}  # category -> code (1, 2, ...; 0 is "none")
        self.n = 0
        cap = max(int(capacity), 16)
        self.ids = np.empty(cap, dtype=object)
        self.mf_row = np.full(cap, -1, dtype=np.int64)  # -1: not known to the MF model (yet)
        self.content = np.zeros((cap, content_dim), dtype=np.float32)  # zeros: no content
        self.cat = np.zeros(cap, dtype=np.int64)
        self.deleted = np.zeros(cap, dtype=bool)
        self.created = np.full(cap, np.nan, dtype=np.float64)  # created_at (epoch ms); NaN: unknown
        # ctr logit, popularity, trending, freshness: computed when needed, kept while valid
        self.item_features = np.zeros((cap, 4), dtype=np.float64)
        self._valid = np.zeros(cap, dtype=bool)  # read through ``valid`` (it applies _invalidated first)
        self._invalidated: list[str] = []  # items invalidated since ``valid`` was last read
        self._mark = np.zeros(cap, dtype=bool)  # scratch for masks (all False between calls)

    def __len__(self) -> int:
        return self.n

    def _grow(self) -> None:
        cap = 2 * len(self.ids)
        for name in ("ids", "mf_row", "content", "cat", "deleted", "created", "item_features", "_valid", "_mark"):
            old = getattr(self, name)
            new = np.empty((cap,) + old.shape[1:], dtype=old.dtype)
            new[: len(old)] = old
            new[len(old):] = {"mf_row": -1, "ids": None, "created": np.nan}.get(name, 0)
            setattr(self, name, new)

    def category_code(self, category: str | None) -> int:
        if not category:
            return 0
        code = self.categories.get(category)
        if code is None:
            code = self.categories[category] = len(self.categories) + 1
        return code

    def add(self, item: str) -> int:
        """The code of ``item``, registering it when new."""
        code = self.code.get(item)
        if code is not None:
            return code
        code = self.n
        if code == len(self.ids):
            self._grow()
        self.code[item] = code
        self.ids[code] = item
        self.n += 1
        self._describe(code, item)
        return code

    def _describe(self, code: int, item: str) -> None:
        vec, category, deleted, created = self.describe(item)
        self.content[code] = 0.0 if vec is None else vec
        self.cat[code] = self.category_code(category)
        self.deleted[code] = deleted
        self.created[code] = np.nan if created is None else float(created)
        self._valid[code] = False

    def update(self, item: str) -> None:
        """``item``'s catalogue row or content changed: describe it again."""
        code = self.code.get(item)
        if code is not None:
            self._describe(code, item)

    @property
    def valid(self) -> np.ndarray:
        """Per code: whether ``item_features`` holds its current values. Invalidations are
        queued (a slate invalidates its ten items, a consume batch holds ~860 slates) and
        applied here, before any read, in one array write: a reader sees exactly what writing
        each of them at once gave."""
        self._apply_invalidations()
        return self._valid

    def _apply_invalidations(self) -> None:
        if self._invalidated:
            codes = [c for c in map(self.code.get, self._invalidated) if c is not None]
            self._invalidated = []
            if codes:
                self._valid[codes] = False

    def invalidate(self, item: str) -> None:
        """``item``'s item-level features changed (an event on it): recompute them when needed."""
        self._invalidated.append(item)

    def invalidate_many(self, items: Sequence[str]) -> None:
        """:meth:`invalidate` of each of ``items`` (a slate's)."""
        self._invalidated.extend(items)
        if len(self._invalidated) > MAX_QUEUED_INVALIDATIONS:  # nothing read them for long
            self._apply_invalidations()

    def codes(self, items: Sequence[str] | Collection[str]) -> np.ndarray:
        """The code of each of ``items`` (any sized iterable, e.g. a dict's keys), registering new ones."""
        n = len(items)
        out = np.fromiter(map(self.code.get, items, repeat(-1)), dtype=np.int64, count=n)
        missing = np.flatnonzero(out < 0)
        if len(missing):
            seq = items if isinstance(items, (list, tuple)) else list(items)
            for p in missing.tolist():
                out[p] = self.add(seq[p])
        return out

    def mf_rows(self, codes: np.ndarray, row_of: Callable[[str], int]) -> np.ndarray:
        """The MF row of each code (-1: unknown); rows of items the model met since are looked up."""
        rows = self.mf_row[codes]
        missing = np.flatnonzero(rows < 0)
        if len(missing):
            ids, mf_row = self.ids, self.mf_row
            for p in missing.tolist():
                r = row_of(ids[codes[p]])
                if r >= 0:
                    rows[p] = mf_row[codes[p]] = r
        return rows

    def marked(self, codes: np.ndarray, marks: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``codes`` are among ``marks`` (O(len) each, no sorting)."""
        m = self._mark
        m[marks] = True
        out = m[codes]
        m[marks] = False
        return out


class LabelCodes:
    """hnswlib label -> :class:`ItemTable` code of one :class:`~freshrec.state.ann.ItemIndex`,
    in a numpy array extended as labels are added (labels only grow until a rebuild, which
    bumps the index's ``generation`` and restarts the map)."""

    def __init__(self) -> None:
        self._index: ItemIndex | None = None
        self._generation = -1
        self._codes = np.full(0, -1, dtype=np.int64)

    def __call__(self, index: ItemIndex, table: ItemTable, labels: np.ndarray) -> np.ndarray:
        """Codes of ``labels`` (any shape; -1 for label -1 and for stale labels)."""
        if index is not self._index or index.generation != self._generation or index.n_labels < len(self._codes):
            self._index, self._generation = index, index.generation
            self._codes = np.full(0, -1, dtype=np.int64)
        start = len(self._codes)
        if index.n_labels > start:
            items = index.label_items(start)
            new = np.full(len(items), -1, dtype=np.int64)
            live = [p for p, i in enumerate(items) if i is not None]
            if live:
                new[live] = table.codes([items[p] for p in live])
            self._codes = np.concatenate([self._codes, new])
        out = self._codes[np.maximum(labels, 0)]
        out[labels < 0] = -1
        return out


class NeighbourRows:
    """Per :class:`ItemTable` code, its item's strongest ``n`` co-visitation neighbours (codes)
    and their normalised weights, as rows of two arrays: a batch of lists gathers the rows of
    every user's recent items with one indexing instead of a cache lookup and a small array per
    recent item (~8 per user): 2-4% less CPU a list, 0.3% fewer instructions (README, session 16).
    600 bytes per table slot (~80 MB at 100k items).

    A row is the cached list :meth:`~freshrec.state.covisitation.CoVisitation.top_list` returns
    (the same entries, in its order), kept while the co-visitation cache keeps that list: its drop
    log (``drops_since``) names the rows to make again. A short row (fewer than ``n``
    neighbours) is checked against the cache at each read: the cache replaces a short list when
    its item's row grows. A different co-visitation object, or a log that no longer reaches
    back, makes every row again. Derived state only, in the codes of one table.
    """

    def __init__(self, table: ItemTable, n: int) -> None:
        self.table, self.n = table, n
        self._covis: object | None = None
        self._position = 0  # in the co-visitation drop log
        self.codes = np.zeros((0, n), dtype=np.int32)
        self.weights = np.zeros((0, n), dtype=np.float64)
        self.lengths = np.zeros(0, dtype=np.int64)  # -1: no row (made when read)
        self._short: dict[int, list] = {}  # code -> the cached list a short row was made from

    def _sync(self, covis) -> None:
        """Forget the rows whose cached list changed since the last read; grow with the table."""
        need = len(self.table)
        self.codes, self.weights = grown(self.codes, need), grown(self.weights, need)
        self.lengths = grown(self.lengths, need, fill=-1)
        # another co-visitation object: a position before any log, so that every row is remade
        items, self._position = covis.drops_since(self._position if covis is self._covis else -1)
        if items is None:  # everything may have changed
            self._covis = covis
            self.lengths[:] = -1
            self._short.clear()
        elif items:
            get = self.table.code.get
            codes = [c for c in map(get, items) if c is not None]
            if codes:
                self.lengths[codes] = -1

    def gather(self, covis, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The rows of ``codes`` one after the other: ``(neighbour codes, weights, row lengths)``,
        the first two flat, each row in the cached list's order."""
        self._sync(covis)
        lengths = self.lengths[codes]
        check = np.flatnonzero(lengths < self.n)
        if len(check):
            short, ids, table = self._short, self.table.ids, self.table
            for code in np.unique(codes[check]).tolist():
                cached = covis.top_list(ids[code], self.n)
                if self.lengths[code] >= 0 and short.get(code) is cached:
                    continue
                top = cached[: self.n]
                m = len(top)
                if m:
                    self.codes[code, :m] = table.codes([i for i, _ in top])
                    self.weights[code, :m] = [w for _, w in top]
                self.lengths[code] = m
                if m < self.n:
                    short[code] = cached
                else:
                    short.pop(code, None)
            lengths = self.lengths[codes]
        take = np.arange(self.n) < lengths[:, None]
        return self.codes[codes][take], self.weights[codes][take], lengths


def _top_k_rows(values: np.ndarray, owner: np.ndarray, local: np.ndarray, m: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per group (``owner``, 0 .. m-1, each group's rows contiguous, ``local`` their positions in
    it), the positions of its ``k`` largest ``values`` in decreasing order, ties in position
    order: the first ``k`` of ``np.argsort(-group_values, kind="stable")``, for all groups at
    once. Returns the positions, group after group, and where each group's positions start.

    The groups' values go in one padded matrix; ``np.partition`` finds each row's k-th largest,
    the rows above it are taken with as many of the rows equal to it as fill k, in position
    order, and only those are sorted (one ``lexsort`` of every candidate of a batch of 64 lists
    cost ~1.4 ms)."""
    sizes = np.bincount(owner, minlength=m)
    width = max(int(sizes.max()), k) if len(values) else k
    M = np.full((m, width), -np.inf)
    M[owner, local] = values
    valid = np.zeros((m, width), dtype=bool)
    valid[owner, local] = True
    kth = np.partition(M, width - k, axis=1)[:, width - k]
    above = valid & (M > kth[:, None])
    tied = valid & (M == kth[:, None])
    need = k - above.sum(axis=1)
    chosen = above | (tied & (np.cumsum(tied, axis=1) <= need[:, None]))
    rows, cols = np.nonzero(chosen)  # row-major: group after group, positions increasing
    order = np.lexsort((cols, -M[rows, cols], rows))
    n_top = np.minimum(sizes, k)
    starts = np.zeros(m, dtype=np.intp)
    np.cumsum(n_top[:-1], out=starts[1:])
    return cols[order].astype(np.intp), starts


def _capped(order: np.ndarray, cats: np.ndarray, k: int, cap: int) -> list[int]:
    """The first ``k`` of ``order`` taking at most ``cap`` per category (code 0: none, never
    capped), filled past the cap in order when the candidates lack variety."""
    per_cat: Counter[int] = Counter()
    picked: list[int] = []
    skipped: list[int] = []
    # 4k candidates in order are nearly always enough; the rest only when one category dominates
    for part in (order[: 4 * k], order[4 * k:]):
        for j, cat in zip(part.tolist(), cats[part].tolist()):
            if cat and per_cat[cat] >= cap:
                skipped.append(j)
                continue
            per_cat[cat] += 1
            picked.append(j)
            if len(picked) == k:
                return picked
    return picked + skipped[: k - len(picked)]


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
        self._new_table()
        self.clicks = ClickModel(lr=s.click_lr)
        self.pending: OrderedDict[str, PendingImpression] = OrderedDict()  # request_id -> impression
        # Share of impressions the click model learns (1.0: all). The pipeline lowers it to
        # settings.click_sample_behind while the worker is behind: featurising a slate is the
        # largest per-event cost of learning, and the click model needs far fewer examples than a
        # backlog holds. Chosen by request id, so a slate's clicks follow their impression. The
        # MF model learns the sampled slates' negatives with weight / click_sample (the same
        # expected update: ordering every slate's steps on hot items cost more than it saves,
        # see OnlineMF.deferred); clicks and every other event are learned as always.
        self.click_sample = 1.0
        self.behind = False  # the pipeline sets it with click_sample: re-index fewer items per refresh
        self.unsampled: OrderedDict[str, None] = OrderedDict()  # request ids left out of the sample
        # user -> (candidate codes, sampled candidate codes, MF and co-visitation scores of all
        # candidates, sorted when used) of the last published list, in this table's codes (ids
        # in checkpoints, see to_state); the negatives are featurised when learned
        self.published: OrderedDict[str, tuple[np.ndarray, np.ndarray, tuple]] = OrderedDict()
        self.fresh: OrderedDict[str, int] = OrderedDict()  # item -> upsert event time, newest last
        self.rng = np.random.default_rng(s.seed)
        # exploration's Thompson draws on a stream of their own, so that a batch of lists draws
        # them in one call (the same numbers as one call per user, in order: numpy fills a
        # (users, pool) array row after row) while the sampled negatives stay on ``rng``
        self.explore_rng = np.random.default_rng((s.seed, 1))
        self._trend_rank: dict[str, float] = {}
        self._max_pop = 1.0
        self._cache_since = 0
        self._explore: tuple[list[str], np.ndarray, np.ndarray] = ([], np.empty(0), np.empty(0))
        self._explore_stale = False  # a catalogue change since the pool was drawn up
        self.last_index_refresh_ms = 0
        self.counters: Counter[str] = Counter()
        # called with (feature rows, click probabilities) of the ranked items of every list: the
        # drift monitor's sample of the click model's inputs and outputs (Pipeline sets it)
        self.observer: Callable[[np.ndarray, np.ndarray], None] | None = None
        self.click_metrics = OnlineClickMetrics()
        # inside learning_batch: sampled slates waiting to be featurised together at its end,
        # and the item-level features as they were when the batch began
        self._batch_active = False
        self._unfeaturised: list[tuple[PendingImpression, Slate]] = []
        self._snapshot: tuple[np.ndarray, np.ndarray] | None = None  # (item features, valid)

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
        s = self.settings
        # min_drift 0.2: sampled negatives nudge nearly every item a little; re-indexing only the
        # items that moved 20% cut upserts per event from 0.85 to 0.34 on MovieLens 100K at the
        # same HitRate@10 (state/ann.py), and ranking uses exact MF scores anyway
        return IndexRefresher(self.mf, self.index, keep=lambda i: not self.catalogue.is_deleted(i),
                              max_batch=s.index_batch_max_behind if self.behind else s.index_batch_max,
                              min_drift=0.2)

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
        if etype == "impression":
            self._learn_impression(event, user_row)
            self.table.invalidate_many(event["item_ids"])  # their CTR changes with this event: computed afresh
            return
        item = event["item_id"]
        w = self._weight(event)
        request_id = event.get("request_id")
        imp = self.pending.get(request_id) if request_id else None
        if imp is not None and imp.user_id == user and item in imp.items:
            if w > 0:
                imp.clicked.add(item)
        elif w > 0 and not (request_id and request_id in self.unsampled):
            self._learn_against_published(user, user_row, item)
        if w > 0:
            self.mf.learn_one(user, item, w)
        elif w < 0:
            self.mf.learn_negative(user, item, -w)
        self.table.invalidate(item)  # after any feature computation above: the event changes the item's counts

    def _sampled(self, rid: str) -> bool:
        """Whether the click model learns the slate ``rid`` (see ``click_sample``)."""
        return self.click_sample >= 1.0 or rid in self.pending or \
            (zlib.crc32(rid.encode()) & 0xFFFF) < self.click_sample * 0x10000

    @contextmanager
    def learning_batch(self, events: Sequence[dict]) -> Iterator[None]:
        """Learn a batch of events (``learn_event`` of each inside the block) with the per-batch
        work done once: the MF steps are applied together at the end (``OnlineMF.deferred``)
        and the sampled slates are featurised together at the end, against the item-level
        features (CTR, popularity, ...) as they were when the batch began, the user context of
        each slate's own moment and the MF vectors of before the batch. A slate cost ~40 small
        numpy operations when featurised alone. With a batch of one event, the features are
        exactly those of featurising it at once."""
        if self._batch_active:
            yield
            return
        slates = [e["item_ids"] for e in events if e.get("type") == "impression" and self._sampled(e["request_id"])]
        if slates:
            codes = self.table.codes(list(dict.fromkeys(i for items in slates for i in items)))
            self._fill_item_features(codes)
            n = len(self.table)
            self._snapshot = (self.table.item_features[:n].copy(), self.table.valid[:n].copy())
        self._batch_active = True
        try:
            with self.mf.deferred():
                try:
                    yield
                finally:
                    self._featurise_pending()
        finally:
            self._batch_active = False
            self._snapshot = None

    def _featurise_pending(self) -> None:
        """Feature rows of the slates queued inside :meth:`learning_batch`, in one pass."""
        queued, self._unfeaturised = self._unfeaturised, []
        if not queued:
            return
        for (imp, _slate), X in zip(queued, self._features_many([q[1] for q in queued], at_batch_start=True)):
            imp.X = X

    def _learn_impression(self, event: dict, user_row: dict | None) -> None:
        rid = event["request_id"]
        if not self._sampled(rid):
            self.unsampled[rid] = None  # its clicks are not learned against the published list either
            while len(self.unsampled) > PENDING_MAX:
                self.unsampled.popitem(last=False)
            self.counters["impressions_unsampled"] += 1
            return
        user, items = event["user_id"], list(dict.fromkeys(event["item_ids"]))
        ctx = self.context(user, user_row, only=items)
        positions = [event["item_ids"].index(i) for i in items]
        if rid in self.pending:  # a resent slate: learn the earlier one now
            self._finish(self.pending.pop(rid))
        if self._batch_active:
            imp = PendingImpression(user, event["ts"], items, None, set())
            self._unfeaturised.append((imp, self._slate(ctx, items, positions)))
        else:
            imp = PendingImpression(user, event["ts"], items, self.feature_matrix(ctx, items, positions), set())
        self.pending[rid] = imp
        while len(self.pending) > PENDING_MAX:
            self._finish(self.pending.popitem(last=False)[1])
        if self.settings.weight_impression > 0:  # a sampled slate stands for 1 / click_sample of them
            self.mf.learn_negatives(user, items, self.settings.weight_impression / self.click_sample)

    def _finish(self, imp: PendingImpression) -> None:
        if imp.X is None:  # learned before its batch ended (a resent slate, a full queue)
            self._featurise_pending()
        labels = [item in imp.clicked for item in imp.items]
        # predicted before learning: progressive validation of the click model (online AUC, logloss)
        self.click_metrics.observe(self.clicks.predict_proba_many(imp.X), np.asarray(labels))
        self.clicks.learn_many(imp.X, labels)
        self.counters["click_model_examples"] += len(imp.items)

    def finish_impressions(self, stream_time_ms: int, limit: int | None = FINISH_MAX) -> int:
        """Learn the impressions whose click window has passed (event time), at most ``limit``
        of them (the rest at the next refresh: after a jump in event time, e.g. a replayed
        history then live events, tens of thousands come due at once and stalled the loop for
        seconds); returns how many."""
        horizon = stream_time_ms - self.settings.click_window_s * 1000.0
        done = 0
        while self.pending and (limit is None or done < limit):
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
        candidates, sampled, reference = shown  # the candidates' codes, a sample of them, their scores
        code = self.table.code.get(item)
        if code is None or not (candidates == code).any():
            # learning a positive the first stage did not retrieve would teach the ranker that
            # low feature values mean engagement (measured: the weights turn negative)
            self.counters["positives_not_retrieved"] += 1
            return
        self.counters["positives_retrieved"] += 1
        # candidates the user engaged with since the list was published are no negatives: they
        # were positives (a ratings session rates many of them before the next list), and serving
        # never ranks seen items anyway
        seen = user_row["seen"] if user_row and not user_row.get("deleted") else {}
        items = self.table.ids[sampled].tolist()
        negatives = [p for p, i in enumerate(items) if i != item and i not in seen]
        n_neg = self.settings.click_negatives
        if len(negatives) > n_neg:
            negatives = self.rng.choice(negatives, n_neg, replace=False).tolist()
        # the positive and its negatives featurised in the same context, the user's now: with the
        # negatives' rows from publish time, the positive alone saw the user's events since then
        # (its co-visitation with items engaged after the list was made), a train/serve skew
        learned = [item] + [items[p] for p in negatives]
        reference = (np.sort(reference[0]), np.sort(reference[1]))  # sorted here: few lists are learned from
        X_now = self.feature_matrix(self.context(user, user_row, only=learned), learned, reference=reference)
        self.clicks.learn_many(X_now, [1] + [0] * len(negatives))
        self.counters["click_model_examples"] += 1 + len(negatives)

    def forget_user(self, user_id: str) -> None:
        """``user_delete``: the user's vector, remembered list and pending impressions go."""
        self._featurise_pending()  # before the MF model applies its queued steps (it moves a row)
        self.mf.forget_user(user_id)
        self.published.pop(user_id, None)
        for rid in [rid for rid, imp in self.pending.items() if imp.user_id == user_id]:
            del self.pending[rid]

    def observe_catalogue(self, event: dict) -> None:
        """An applied ``item_upsert`` / ``item_delete``."""
        item = event["item_id"]
        self._explore_stale = True  # a new item is explored from the next list on, not the next refresh
        if event["type"] == "item_delete":
            self.content.delete(item)
            self.index.mark_deleted(item)
            self.fresh.pop(item, None)
            self.table.update(item)
            return
        row = self.catalogue.rows.get(item) or event
        self.content.upsert(item, row)
        self.table.update(item)
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
            self.table.valid[:] = False
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
            t0 = time.perf_counter()
            self._refresher().rebuild()
            self.counters["index_rebuilds"] += 1
            log.info("MF index rebuilt (%d items) in %.2fs", len(self.index), time.perf_counter() - t0)
        self.counters["index_refreshes"] += 1
        return {"indexed": stats.indexed, "content_indexed": self.content.flush()}

    # ------------------------------------------------------------------ features
    def _describe_item(self, item: str) -> tuple[np.ndarray | None, str | None, bool, int | None]:
        """What :class:`ItemTable` keeps of an item's catalogue row and content."""
        row = self.catalogue.rows.get(item)
        return (self.content.vector(item), row.get("category") if row else None,
                item in self.catalogue.deleted, (row.get("created_at") or None) if row else None)

    def _new_table(self) -> None:
        """A new (empty) item table and the label maps that use its codes."""
        self.table = ItemTable(self.content.dim, self._describe_item)
        self._neighbours = NeighbourRows(self.table, NEIGHBOURS_N)
        self._mf_labels = LabelCodes()
        self._content_labels = LabelCodes()

    def context(self, user_id: str, user_row: dict | None, only: Sequence[str] | None = None,
                scored: bool = True) -> UserContext:
        """The user's context for ranking; ``only``: the items it will featurise, when known (a
        slate to learn from), so that co-visitation is scored for those items alone; ``scored``
        False: without the co-visitation scores of a list (:meth:`contexts` adds them)."""
        t = self.table
        recent = recent_items(user_row, RECENT_N)
        seen = user_row["seen"] if user_row and not user_row.get("deleted") else {}
        history = user_row["h"] if user_row and user_row.get("h") else []
        categories = None
        if history:
            codes = t.codes([e[0] for e in history])  # may grow the table: index its arrays after
            counts = np.bincount(t.cat[codes], minlength=len(t.categories) + 1).astype(np.float64)
            counts[0] = 0.0  # no category
            categories = counts / len(history)
        profile = recent_q = None
        recent_codes = t.codes(recent)
        if recent:
            codes = recent_codes
            weights = RECENT_WEIGHTS[: len(recent)]
            prof = RECENT_WEIGHTS32[: len(recent)] @ t.content[codes]
            norm = float(np.linalg.norm(prof))
            if norm >= 1e-12:
                profile = (prof / norm).astype(np.float32)
            recent_q = self.mf.mean_of_rows(t.mf_rows(codes, self.mf.row_of), weights)
        if only is not None:  # a slate: a few items looked up in the recent items' neighbour maps
            return UserContext(user_id, seen, recent, covis_scores_of(self.covis, recent, NEIGHBOURS_N, only),
                               categories, profile, recent_q)
        ctx = UserContext(user_id, seen, recent, {}, categories, profile, recent_q, recent_codes=recent_codes)
        if scored:
            ctx.covis_scores = self._covis_scores_many([recent_codes])[0]
        return ctx

    def contexts(self, users: Sequence[tuple[str, dict | None]]) -> list[UserContext]:
        """:meth:`context` of each ``(user_id, user_row)`` (a list's context), with the
        co-visitation scores of all of them computed in one pass (:meth:`_covis_scores_many`)."""
        ctxs = [self.context(user_id, row, scored=False) for user_id, row in users]
        for ctx, scores in zip(ctxs, self._covis_scores_many([ctx.recent_codes for ctx in ctxs])):
            ctx.covis_scores = scores
        return ctxs

    def _covis_scores_many(self, recents: Sequence[np.ndarray]) -> list[CovisScores | None]:
        """Per user (``recents``: the codes of each user's recent items), :func:`~freshrec.state.recommender.covis_scores`
        of his recent items on arrays, with exactly its sums: ``bincount`` adds each code's terms
        in the order the dict loop does. Every user's terms go through one ``unique``, one
        ``bincount`` and one ``lexsort``, keyed by (user, code), instead of those calls and the
        weighting of each recent item's array per user: 2.5% fewer instructions per list
        (README, session 15); the recent items' neighbour rows are gathered in one indexing
        (:class:`NeighbourRows`, session 16)."""
        out: list[CovisScores | None] = [None] * len(recents)
        n_recent = np.fromiter(map(len, recents), dtype=np.intp, count=len(recents))
        if not n_recent.sum():
            return out
        recent = np.concatenate(recents)
        neighbours, weights, lengths = self._neighbours.gather(self.covis, recent)
        if not len(neighbours):
            return out
        span = np.int64(len(self.table) + 1)  # after gather, which may grow the table
        term_owner = np.repeat(np.arange(len(recents), dtype=np.int64), n_recent)
        ranks = np.arange(len(recent)) - np.repeat(np.cumsum(n_recent) - n_recent, n_recent)
        owner = np.repeat(term_owner, lengths)
        values = weights * np.repeat(RECENT_WEIGHTS[ranks], lengths)
        keys, first, inverse = np.unique(owner * span + neighbours, return_index=True, return_inverse=True)
        sums = np.bincount(inverse, weights=values, minlength=len(keys))
        key_owner = keys // span  # sorted, as the keys
        item_codes = keys - key_owner * span
        order = np.lexsort((first, -sums, key_owner))  # per user: strongest first, ties in first-met order
        bounds = np.searchsorted(key_owner, np.arange(len(recents) + 1)).tolist()
        for u in np.unique(term_owner[lengths > 0]).tolist():
            lo, hi = bounds[u], bounds[u + 1]
            out[u] = CovisScores(item_codes[lo:hi], sums[lo:hi], item_codes[order[lo:min(hi, lo + 2 * NEIGHBOURS_N)]])
        return out

    def _fill_item_features(self, codes: np.ndarray) -> None:
        """Compute the item-level features of the codes whose values are not valid: (ctr logit,
        popularity, trending, freshness), kept until the item's next event or the next cache
        expiry (item-level features do not depend on the user). Lists find ~1% of their
        candidates stale, an impression ~70% of its items (measured on the synthetic stream):
        one pass over the items' counters, then the arithmetic on arrays."""
        t = self.table
        stale = codes[~t.valid[codes]]
        if not len(stale):
            return
        if len(stale) > 1:
            stale = np.unique(stale)
        s = self.settings
        now = self.features.stream_time_ms
        stats_get = self.features.item_stats.rows.get
        trend_get = self._trend_rank.get
        # per item: clicks, impressions, decayed popularity, its reference time, trending rank
        vals = []
        for item in t.ids[stale].tolist():
            r = stats_get(item)
            if r is None:
                vals.append((0, 0, 0.0, now, trend_get(item, 0.0)))
            else:
                c = r["c"]
                vals.append((c.get("click", 0), c.get("impression", 0), r.get("pop") or 0.0, r.get("t0", now),
                             trend_get(item, 0.0)))
        v = np.array(vals, dtype=np.float64)
        a, ab = s.ctr_prior_clicks, s.ctr_prior_clicks + s.ctr_prior_impressions
        ctr = np.minimum(np.maximum((v[:, 0] + a) / (v[:, 1] + ab), 1e-6), 1.0 - 1e-6)  # popularity.ctr
        hl = self.features.item_stats.half_life_ms
        pop = np.log1p(v[:, 2] * np.exp2((v[:, 3] - now) / hl)) / math.log1p(self._max_pop)  # decay.value_at
        created = t.created[stale]
        fresh = np.exp(-np.maximum(0.0, now - created) / DAY_MS)
        out = t.item_features
        out[stale, 0] = np.log(ctr / (1.0 - ctr))  # clickmodel.logit
        out[stale, 1] = pop
        out[stale, 2] = v[:, 4]
        out[stale, 3] = np.where(np.isnan(created) | (created == 0), 0.0, fresh)
        t.valid[stale] = True

    def feature_matrix(self, ctx: UserContext, items: Sequence[str],
                       positions: Sequence[int] | None = None,
                       reference: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """Rows of :data:`~freshrec.state.clickmodel.FEATURES` for ``items`` shown to ``ctx``'s user.

        The rank features are relative to ``reference`` (sorted MF and co-visitation scores of the
        set the items compete in), by default to ``items`` themselves (a candidate set, a slate).
        """
        return self._features_many([self._slate(ctx, items, positions, reference)])[0]

    def _slate(self, ctx: UserContext, items: Sequence[str], positions: Sequence[int] | None,
               reference: tuple[np.ndarray, np.ndarray] | None = None) -> Slate:
        """What featurising ``items`` for ``ctx`` needs of the MF model as it is now."""
        codes = self.table.codes(items)
        rows = self.table.mf_rows(codes, self.mf.row_of)
        mean_bias = self.mf._mean_bias() if (rows < 0).any() else 0.0
        return Slate(ctx, codes, positions, rows, self.mf.user_vector(ctx.user_id), mean_bias, reference=reference)

    def _features_many(self, slates: Sequence[Slate], at_batch_start: bool = False) -> list[np.ndarray]:
        """:meth:`feature_matrix` of several slates in one pass over their concatenated rows.
        Item-level features are computed now, or with ``at_batch_start`` taken from the snapshot
        made when the batch began (:meth:`learning_batch`), where it has them."""
        X, starts = self._feature_rows(slates, at_batch_start)
        return np.split(X, starts[1:])

    def _feature_rows(self, slates: Sequence[Slate], at_batch_start: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_features_many` as one matrix, the slates' rows one after the other, and the
        first row of each slate."""
        m = len(slates)
        lengths = np.fromiter((len(s.codes) for s in slates), dtype=np.intp, count=m)
        starts = np.zeros(m, dtype=np.intp)
        np.cumsum(lengths[:-1], out=starts[1:])
        codes = np.concatenate([s.codes for s in slates])
        n = len(codes)
        X = np.zeros((n, N_FEATURES), dtype=np.float64)
        if n == 0:
            return X, starts
        ctxs = [s.ctx for s in slates]
        owner = np.repeat(np.arange(m), lengths)
        t, mf = self.table, self.mf
        rows = np.concatenate([s.mf_rows for s in slates])
        known = rows >= 0
        P = np.stack([s.user_vector for s in slates])
        Qs = np.zeros((m, mf.n_factors), dtype=np.float32)
        for j, ctx in enumerate(ctxs):
            if ctx.recent_q is not None:
                Qs[j] = ctx.recent_q
        qn = np.linalg.norm(Qs, axis=1)
        mean_bias = np.fromiter((s.mean_bias for s in slates), dtype=np.float32, count=m)
        mf_score = mean_bias[owner]  # unknown rows: the mean bias (score_rows)
        cosine = np.zeros(n, dtype=np.float32)
        if known.any():
            r, o = rows[known], owner[known]
            V = mf._V[r]
            mf_score[known] = np.einsum("ij,ij->i", V, P[o]) + mf._b[r]
            norms = np.maximum(np.linalg.norm(V, axis=1), 1e-9)
            with np.errstate(invalid="ignore", divide="ignore"):
                cos = np.einsum("ij,ij->i", V, Qs[o]) / (norms * qn[o])
            cosine[known] = np.where(qn[o] > 0.0, cos, 0.0)
        X[:, COL["mf"]], X[:, COL["mf_recent"]] = mf_score, cosine
        cv = np.zeros(n, dtype=np.float64)
        ids = t.ids
        with_arrays = []  # slates whose context holds its co-visitation scores as arrays (lists)
        for j, ctx in enumerate(ctxs):
            if ctx.covis_scores is not None:
                with_arrays.append(j)
            elif ctx.covis:
                s, e = starts[j], starts[j] + lengths[j]
                cv[s:e] = np.fromiter(map(ctx.covis.get, ids[codes[s:e]].tolist(), repeat(0.0)),
                                      dtype=np.float64, count=e - s)
        if with_arrays:  # one search of every row's (slate, code) among every slate's scored ones
            span = np.int64(len(t) + 1)
            keys = np.concatenate([j * span + ctxs[j].covis_scores.codes for j in with_arrays])
            values = np.concatenate([ctxs[j].covis_scores.values for j in with_arrays])
            cv += _sorted_lookup(keys, values, owner * span + codes)  # 0.0 on the other slates' rows
        X[:, COL["covis"]] = np.log1p(20.0 * cv)
        if at_batch_start:
            X[:, COL["ctr"]:COL["freshness"] + 1] = self._item_features_at_batch_start(codes)
        else:
            self._fill_item_features(codes)
            X[:, COL["ctr"]:COL["freshness"] + 1] = t.item_features[codes]
        n_cat = len(t.categories) + 1
        shares = np.zeros((m, n_cat), dtype=np.float64)
        content = X[:, COL["content"]]  # per slate: gathering a profile per row costs more
        for j, ctx in enumerate(ctxs):
            if ctx.categories is not None:
                shares[j, : len(ctx.categories)] = ctx.categories[:n_cat]
            if ctx.profile is not None:
                s = starts[j]
                content[s:s + lengths[j]] = t.content[codes[s:s + lengths[j]]] @ ctx.profile
        X[:, COL["category"]] = shares[owner, t.cat[codes]]
        for j, s in enumerate(slates):
            if s.positions is not None:
                X[starts[j]:starts[j] + lengths[j], COL["position"]] = np.log1p(np.asarray(s.positions, dtype=np.float64))
        n_ref = np.fromiter((len(s.codes) if s.n_reference is None else s.n_reference for s in slates),
                            dtype=np.intp, count=m)
        is_ref = (np.arange(n) - starts[owner]) < n_ref[owner]
        for name, ref in (("mf_rank", "mf"), ("covis_rank", "covis")):
            X[:, COL[name]] = _rank_within(X[:, COL[ref]], owner, n_ref, is_ref)
        for j, s in enumerate(slates):  # ranked against a given set instead (a published list)
            if s.reference is not None:
                rows_j = slice(starts[j], starts[j] + lengths[j])
                for name, ref, ref_sorted in (("mf_rank", "mf", s.reference[0]), ("covis_rank", "covis", s.reference[1])):
                    X[rows_j, COL[name]] = (np.searchsorted(ref_sorted, X[rows_j, COL[ref]], side="left")
                                            / max(len(ref_sorted), 1))
        return X, starts

    def _item_features_at_batch_start(self, codes: np.ndarray) -> np.ndarray:
        """Item-level features of ``codes``: from the batch's snapshot where it holds valid ones,
        computed now for the others (and for all without a snapshot: no slate was expected)."""
        snap = self._snapshot
        if snap is None:
            self._fill_item_features(codes)
            return self.table.item_features[codes]
        values, valid = snap
        inside = codes < len(valid)
        ok = np.zeros(len(codes), dtype=bool)
        ok[inside] = valid[codes[inside]]
        out = np.empty((len(codes), values.shape[1]), dtype=np.float64)
        out[ok] = values[codes[ok]]
        if not ok.all():
            rest = codes[~ok]
            self._fill_item_features(rest)
            out[~ok] = self.table.item_features[rest]
        return out

    # ------------------------------------------------------------------ ranking
    def candidates(self, ctx: UserContext) -> list[str]:
        """The user's first-stage candidates, seen and deleted items excluded."""
        return self.table.ids[self._candidates_many([ctx])[0]].tolist()

    def _shared_candidates(self) -> np.ndarray:
        """Codes of the candidates of every user: trending, then the newest catalogue items."""
        s = self.settings
        items = [item for item, _ in self.trending.global_list]
        if s.fresh_candidates > 0:
            horizon = self.features.stream_time_ms - s.fresh_window_s * 1000.0
            for n, (item, ts) in enumerate(reversed(self.fresh.items())):
                if n >= s.fresh_candidates or ts < horizon:
                    break
                items.append(item)
        return self.table.codes(items)

    def _candidates_many(self, ctxs: Sequence[UserContext]) -> list[np.ndarray]:
        """Candidate codes of each user, in the order the sources come: co-visitation, ANN from
        the user's MF vector, ANN near the recent items' mean vector, content ANN, trending, fresh
        (first occurrence kept); seen and deleted items excluded. The ANN queries of all users go
        to hnswlib in one batch per index (see :meth:`_knn_unseen`).

        A user without engagements has no ANN candidates from his MF vector: it is its random
        start moved only by ignored impressions and dismissals, and its neighbours were noise
        the ranker then had to beat (MIND sample, 62% of the tests such users: HitRate@10 0.155
        with them, 0.213 without, half-life 1 h; MovieLens 100K 0.2012 and 0.2009, noise)."""
        s, t = self.settings, self.table
        if not ctxs:
            return []
        seen = [t.codes(ctx.seen) for ctx in ctxs]
        engaged = [r for r, ctx in enumerate(ctxs) if ctx.recent]
        users = [np.zeros(0, dtype=np.int64)] * len(ctxs)
        if engaged:
            got = self._knn_unseen(self.index, self._mf_labels,
                                   self.mf.query_vectors([ctxs[r].user_id for r in engaged]), s.ann_candidates,
                                   [ctxs[r] for r in engaged], [seen[r] for r in engaged])
            for r, codes in zip(engaged, got):
                users[r] = codes
        near = self._knn_rows(self.index, self._mf_labels, RECENT_ANN_CANDIDATES, ctxs, seen,
                              lambda c: None if c.recent_q is None else np.append(c.recent_q, np.float32(0.0)))
        content = self._knn_rows(self.content.index, self._content_labels, s.content_candidates, ctxs, seen,
                                 lambda c: c.profile)
        shared = self._shared_candidates()
        # every user's sources one after the other, deduplicated and filtered in one pass keyed
        # by (user, code): per user, the first occurrence of each code, in the sources' order
        m, none = len(ctxs), np.zeros(0, dtype=np.int64)
        parts = []
        for r, ctx in enumerate(ctxs):
            parts += (ctx.covis_scores.top if ctx.covis_scores is not None else none, users[r], near[r], content[r], shared)
        lengths = np.fromiter(map(len, parts), dtype=np.intp, count=len(parts)).reshape(m, 5).sum(axis=1)
        span = np.int64(len(t) + 1)
        owner = np.repeat(np.arange(m, dtype=np.int64), lengths)
        codes = np.concatenate(parts)
        _, first = np.unique(owner * span + codes, return_index=True)
        first.sort()
        codes, owner = codes[first], owner[first]
        keep = ~t.deleted[codes]
        n_seen = [len(s) for s in seen]
        if any(n_seen):
            seen_keys = np.repeat(np.arange(m, dtype=np.int64), n_seen) * span + np.concatenate(seen)
            keep &= ~_member(owner * span + codes, seen_keys)
        codes, owner = codes[keep], owner[keep]
        bounds = np.searchsorted(owner, np.arange(m + 1)).tolist()
        return [codes[bounds[r]:bounds[r + 1]] for r in range(m)]

    def _knn_rows(self, index: ItemIndex, labels: LabelCodes, k: int, ctxs: Sequence[UserContext],
                  seen: list[np.ndarray], query: Callable[[UserContext], np.ndarray | None]) -> list[np.ndarray]:
        """:meth:`_knn_unseen` for the users whose ``query(ctx)`` is not None (empty for the rest)."""
        out = [np.zeros(0, dtype=np.int64)] * len(ctxs)
        if k <= 0:
            return out
        rows, qs = [], []
        for r, ctx in enumerate(ctxs):
            q = query(ctx)
            if q is not None and q.any():
                rows.append(r)
                qs.append(q)
        if rows:
            got = self._knn_unseen(index, labels, np.stack(qs), k, [ctxs[r] for r in rows], [seen[r] for r in rows])
            for r, codes in zip(rows, got):
                out[r] = codes
        return out

    def _knn_unseen(self, index: ItemIndex, labels: LabelCodes, Q: np.ndarray, k: int,
                    ctxs: Sequence[UserContext], seen: list[np.ndarray]) -> list[np.ndarray]:
        """Codes of the ``k`` best items of ``index`` for each row of ``Q`` that its user has not
        seen. Users are grouped by how many items they have seen (rounded up to a power of 2),
        and each group is one hnswlib batch (on ``ANN_THREADS``, without the GIL) asking for ``k``
        plus that many, filtered afterwards; a user with more seen items than the index's
        ``filter_threshold`` is queried alone with hnswlib's filter (cheaper past it, ann.py)."""
        t = self.table
        out = [np.zeros(0, dtype=np.int64)] * len(ctxs)
        if k <= 0 or not len(index):
            return out
        groups: dict[int, list[int]] = {}
        for r, sc in enumerate(seen):
            m = len(sc)
            if m > index.filter_threshold:
                out[r] = t.codes([i for i, _ in index.query(Q[r], k, exclude=ctxs[r].seen)])
            else:
                groups.setdefault(1 << (m - 1).bit_length() if m else 0, []).append(r)
        for extra, rows in groups.items():
            got, _ = index.query_many(Q[rows], k + extra, num_threads=ANN_THREADS,
                                      exact_max_work=self.settings.ann_exact_max_work)
            codes = labels(index, t, got)
            for j, r in enumerate(rows):
                c = codes[j]
                c = c[c >= 0]
                if len(seen[r]):
                    c = c[~t.marked(c, seen[r])]
                out[r] = c[:k]
        return out

    def _refresh_explore_pool(self) -> None:
        """The items exploration draws from, with their Beta posteriors on CTR: the newest fresh
        items (upserted within ``fresh_window_s``) still under ``explore_max_views``. Computed
        once per refresh (and before the next lists after a catalogue change) and bounded by
        ``EXPLORE_POOL``, so a list pays for a few hundred draws."""
        self._explore_stale = False
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

    def _thompson_many(self, n: int, seens: Sequence[Any]) -> list[np.ndarray]:
        """Per user (``seens``: each user's seen items), the codes of the first ``n`` items of the
        exploration pool he has not seen, in Thompson-sampling order: one Beta draw per item and
        user, every user's in one call on ``explore_rng`` (the numbers of one call per user, in
        order). Exploration takes the best of them not already in the list."""
        pool, a, b = self._explore
        if not pool or not seens:
            return [np.zeros(0, dtype=np.int64)] * len(seens)
        codes = self.table.codes(pool)
        order = np.argsort(-self.explore_rng.beta(a, b, size=(len(seens), len(pool))), axis=1)
        out = []
        for r, seen in enumerate(seens):
            if seen:  # the first n unseen are among the first n + len(seen)
                row = [j for j in order[r, : n + len(seen)].tolist() if pool[j] not in seen][:n]
                out.append(codes[row])
            else:
                out.append(codes[order[r, :n]])
        return out

    def rank(self, user_id: str, user_row: dict | None, k: int,
             remember: bool = False) -> list[tuple[str, float]]:
        """The user's top ``k`` ``(item_id, click probability)``; ``remember`` keeps the list's
        candidates as the user's last published list (negatives for the click model)."""
        return self.rank_many([(user_id, user_row)], k, remember)[0]

    def rank_many(self, users: Sequence[tuple[str, dict | None]], k: int,
                  remember: bool = False) -> list[list[tuple[str, float]]]:
        """:meth:`rank` of several users at once: the same lists as one call each (the random
        draws are made user after user, in order), with the ANN queries, the feature matrix, the
        click model and the second stage batched."""
        if self._explore_stale:
            self._refresh_explore_pool()
        ctxs = self.contexts(users)
        cands = self._candidates_many(ctxs)
        s, t, mf = self.settings, self.table, self.mf
        out: list[list[tuple[str, float]]] = [[] for _ in ctxs]
        live = [r for r, codes in enumerate(cands) if len(codes)]
        if not live:
            return out
        n_explore = int(round(k * s.explore_share)) if s.explore_share > 0 else 0
        # the exploration candidates are drawn first so that their feature rows come in the
        # candidates' matrix, ranked against the candidates (one matrix per list instead of two)
        drawn = (self._thompson_many(n_explore + k, [ctxs[r].seen for r in live]) if n_explore
                 else [np.zeros(0, dtype=np.int64)] * len(live))
        samples = ([self.rng.choice(len(cands[r]), min(len(cands[r]), CANDIDATE_SAMPLE), replace=False)
                    for r in live] if remember else None)
        mean_bias = mf._mean_bias()
        slates = []
        for r, extra in zip(live, drawn):
            codes = np.concatenate([cands[r], extra]) if len(extra) else cands[r]
            slates.append(Slate(ctxs[r], codes, None, t.mf_rows(codes, mf.row_of),
                                mf.user_vector(ctxs[r].user_id), mean_bias, n_reference=len(cands[r])))
        # one feature matrix and one click-model pass for every candidate of every user
        X, starts = self._feature_rows(slates)
        for r, scored in zip(live, self._second_stage(slates, X, starts, self.clicks.logits(X), k,
                                                      n_explore, samples)):
            out[r] = scored
        return out

    def _second_stage(self, slates: Sequence[Slate], X: np.ndarray, starts: np.ndarray, logits: np.ndarray,
                      k: int, n_explore: int, samples: list[np.ndarray] | None) -> list[list[tuple[str, float]]]:
        """The lists of a batch of ranked slates (each: the user's candidates, then the
        exploration items drawn for him), given their feature rows and click logits: per slate,
        its ``k`` best candidates (at most ``diversity_max_share`` of them from one category),
        the last of them replaced by up to ``n_explore`` drawn items not among them. With
        ``samples`` (the candidates to remember, per slate), each list's candidates are
        remembered as what its user was shown. Sorted, counted and scored for the whole batch at
        once; the loop over users only slices."""
        s, t = self.settings, self.table
        m = len(slates)
        n_cand = np.fromiter((sl.n_reference for sl in slates), dtype=np.intp, count=m)
        n_rows = np.fromiter((len(sl.codes) for sl in slates), dtype=np.intp, count=m)
        codes = np.concatenate([sl.codes for sl in slates])
        owner = np.repeat(np.arange(m), n_rows)
        local = np.arange(len(codes)) - starts[owner]
        cand = np.flatnonzero(local < n_cand[owner])
        # per slate, the rows of its k best candidates, best first (ties: in candidate order)
        top, t_start = _top_k_rows(logits[cand], owner[cand], local[cand], m, k)
        top += starts[np.repeat(np.arange(m), np.minimum(n_cand, k))]
        cats = t.cat[codes]
        cap = k if s.diversity_max_share >= 1.0 else max(1, math.ceil(k * s.diversity_max_share))
        n_cat = int(cats.max()) + 1
        counts = np.bincount(owner[top] * n_cat + cats[top], minlength=m * n_cat).reshape(m, n_cat)
        counts[:, 0] = 0  # code 0: no category, never capped
        capped = (counts.max(axis=1) > cap).tolist()  # nearly never: then the cap's loop
        top_l, codes_l = top.tolist(), codes.tolist()
        starts_l, n_cand_l, n_rows_l = starts.tolist(), n_cand.tolist(), n_rows.tolist()
        listed: list[int] = []  # rows of every list, in list order: its kept candidates, then its explored items
        n_kept: list[int] = []
        n_listed: list[int] = []
        for j in range(m):
            st, nc = starts_l[j], n_cand_l[j]
            if capped[j]:
                order = np.argsort(-logits[st:st + nc], kind="stable")
                picked = [st + i for i in _capped(order, cats[st:st + nc], k, cap)]
            else:
                picked = top_l[t_start[j]:t_start[j] + min(nc, k)]
            explore: list[int] = []
            if n_rows_l[j] > nc:
                chosen = {codes_l[i] for i in picked}
                explore = [i for i in range(st + nc, st + n_rows_l[j]) if codes_l[i] not in chosen][:n_explore]
            keep = picked[: k - len(explore)]
            listed.extend(keep)
            listed.extend(explore)
            n_kept.append(len(keep))
            n_listed.append(len(keep) + len(explore))
        rows = np.asarray(listed, dtype=np.intp)
        probs = 1.0 / (1.0 + np.exp(-np.clip(logits[rows], -30, 30)))
        ids = t.ids[codes[rows]].tolist()
        rounded = [round(p, 6) for p in probs.tolist()]
        out: list[list[tuple[str, float]]] = []
        kept = np.zeros(len(rows), dtype=bool)
        pos = 0
        for n, n_keep in zip(n_listed, n_kept):
            out.append(list(zip(ids[pos:pos + n], rounded[pos:pos + n])))
            kept[pos:pos + n_keep] = True
            pos += n
        self.counters["explored"] += len(rows) - sum(n_kept)
        if self.observer is not None and len(rows) and kept.any():
            self.observer(X[rows[kept]], probs[kept])
        if samples is not None:
            self._remember(slates, X, codes, cand, owner, samples)
        return out

    def _remember(self, slates: Sequence[Slate], X: np.ndarray, codes: np.ndarray, cand: np.ndarray,
                  owner: np.ndarray, samples: list[np.ndarray]) -> None:
        """Each slate's candidates (rows ``cand`` of ``X``) as its user's last published list:
        their codes, the sampled ones (negatives for the click model's next positive of the
        user), and their MF and co-visitation scores (what those negatives' rank features refer
        to, sorted by :meth:`_learn_against_published` when it uses them: few lists are learned
        from, so their ids are looked up then, not for every list)."""
        cand_codes = codes[cand]
        mf_scores = X[cand, COL["mf"]].astype(np.float32)
        covis = X[cand, COL["covis"]].astype(np.float32)
        published = self.published
        pos = 0
        for sl, sample in zip(slates, samples):
            n = sl.n_reference
            ccodes = cand_codes[pos:pos + n].copy()
            user = sl.ctx.user_id
            published[user] = (ccodes, ccodes[sample],
                               (mf_scores[pos:pos + n].copy(), covis[pos:pos + n].copy()))
            published.move_to_end(user)
            pos += n
        while len(published) > PUBLISHED_KEEP:
            published.popitem(last=False)

    def recommend_one(self, user_id: str, user_row: dict | None, k: int) -> list[tuple[str, float]]:
        return self.rank(user_id, user_row, k)

    def publish_one(self, user_id: str, user_row: dict | None, k: int) -> list[tuple[str, float]]:
        """The list to publish; it is remembered as what the user was shown."""
        return self.rank(user_id, user_row, k, remember=True)

    def publish_many(self, users: Sequence[tuple[str, dict | None]], k: int) -> list[list[tuple[str, float]]]:
        """:meth:`publish_one` of each ``(user_id, user_row)``, in one batch (:meth:`rank_many`):
        the same lists and the same remembered lists as one call per user, in that order."""
        return self.rank_many(users, k, remember=True)

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
        self._featurise_pending()
        ids = self.table.ids
        return {"mf": self.mf.to_state(), "content": self.content.to_state(), "clicks": self.clicks,
                "pending": self.pending, "fresh": self.fresh,
                "published": {u: (ids[c].tolist(), ids[sample].tolist(), ref)  # ids: a loaded checkpoint starts a new table
                              for u, (c, sample, ref) in self.published.items()},
                "rng": self.rng.bit_generator.state, "explore_rng": self.explore_rng.bit_generator.state,
                "counters": dict(self.counters),
                "last_index_refresh_ms": self.last_index_refresh_ms}

    def load_state(self, state: dict, index: ItemIndex | None) -> None:
        self.mf = OnlineMF.from_state(state["mf"])
        self.content = ContentIndex.from_state(state["content"])
        self._new_table()
        self.clicks = state["clicks"]
        self.pending = state["pending"]
        # checkpoints before the negatives were featurised at learning time held their rows too,
        # and before session 13 a frozenset of the candidates' ids
        codes = self.table.codes
        self.published = OrderedDict((u, (codes(v[0]), codes(v[1]), v[-1])) for u, v in state["published"].items())
        self.fresh = state["fresh"]
        self.rng.bit_generator.state = state["rng"]
        if "explore_rng" in state:  # checkpoints before it drew exploration from ``rng``
            self.explore_rng.bit_generator.state = state["explore_rng"]
        self.counters = Counter(state["counters"])
        self.last_index_refresh_ms = state["last_index_refresh_ms"]
        self.refresh_caches()
        if index is None:  # no graph saved: rebuild it from the vectors
            index = self._new_index()
            self.index = index
            self._refresher().rebuild([i for i in self.mf.item_ids if not self.catalogue.is_deleted(i)])
        else:
            self.index = index
