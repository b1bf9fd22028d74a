"""Online matrix factorisation for implicit feedback, learned one event at a time.

:class:`OnlineMF` is incremental SGD matrix factorisation in the style of ISGD (Vinagre, Jorge &
Gama, 2014): every engagement pulls the user's vector and the item's vector towards a high score,
once, as it happens. Implicit data has no observed zeros, so each positive comes with a few
*sampled negatives* pushed towards a low score (without them every score drifts up and the ranking
collapses to popularity). Explicit negatives (an impression without a click, a dismissal) go
through :meth:`OnlineMF.learn_negative`. The protocol is River's (``learn_one`` / ``predict_one``),
plus numpy batch scoring (:meth:`OnlineMF.score_items`): one matrix-vector product ranks a whole
catalogue or a candidate list, which River's dict-of-vectors ``reco`` models cannot do.

Scores are ``user_vector . item_vector + item_bias``. The bias learns how often an item is a
positive rather than a negative (its popularity), which is what a new user (zero vector) is
ranked by. :meth:`OnlineMF.index_vectors` / :meth:`OnlineMF.query_vector` fold the bias into one
extra dimension, so an inner-product ANN index (:mod:`freshrec.state.ann`) ranks exactly as
:meth:`OnlineMF.score_items` does.

Storage is one float32 matrix per side with an ``id -> row`` map, grown by doubling (amortised
O(1) per new id). A new row starts as a small random vector seeded by the model seed *and the id*,
so it does not depend on arrival order (replays and partition moves start from the same vector).
Reads never create rows: an unknown user scores as the zero vector (the prior mean), i.e. gets the
popularity ranking; an unknown item scores as a zero vector with the mean item bias.

Items whose vector changed since :meth:`OnlineMF.clear_dirty` are listed by
:meth:`OnlineMF.dirty_items`, so the ANN index is refreshed in one batch on a short interval
instead of once per event (an hnswlib update costs milliseconds). Every sampled negative is a
changed item too: with 8 negatives an event dirties up to 9 items.

Negative samplers (``negatives=``):

* ``"lru"`` (default): Vinagre et al.'s recency-based negatives (2015). The items least recently
  engaged with are taken from the front of a queue and sent to its back; an engaged item goes to
  the back too. Items are negatives about as often as with uniform sampling, but never right
  after they were engaged with, and without sampling noise. O(1) per negative.
* ``"uniform"``: uniformly among all known items.
* ``"popularity"``: an item from the last ``window`` positives, uniformly by position (so in
  proportion to recent popularity), O(1). It fights the popularity bias rather than modelling it.

Defaults were chosen on MovieLens 100K, prequentially (each rating ranked among all known items
before it is learned, the user's rated items excluded): HitRate@10 0.145 with these defaults
(0.146 with another seed), against 0.077 for all-time popularity and 0.067 for textbook ISGD
(squared loss, lr 0.05, l2 0.01, 4 uniform negatives). One change at a time from the defaults:
uniform negatives 0.135, popularity negatives 0.065, no negatives 0.092, squared loss 0.131, no
item bias 0.132, 4 negatives at full weight 0.133, 16 / 64 factors 0.144 / 0.146, l2 0.01 0.143.
The learning rate matters most and has a cliff: 0.1 gives 0.112, 0.2 0.139, 0.25-0.3 0.146,
0.4 0.133, 0.5 0.081. ``weight`` multiplies the step, so keep event weights near 1 (e.g. click
1, conversion 2) or lower ``lr`` when using heavier ones.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from contextlib import contextmanager
from itertools import chain
from typing import Iterable, Iterator, Sequence

import numpy as np

from freshrec.state.arrays import grown

STATE_VERSION = 1
# a queued SGD step: (user row, item rows, first row's target, first row's weight, the others' weight)
Step = tuple[int, list[int], float, float, float]
NEGATIVE_SAMPLERS = ("popularity", "uniform", "lru")
LOSSES = ("squared", "logistic")


class OnlineMF:
    """Incremental matrix factorisation with negative sampling (ISGD-style), one event at a time.

    Parameters
    ----------
    n_factors: latent dimensions.
    lr: SGD step for vectors; ``bias_lr`` for item biases (default: ``lr``).
    l2: L2 penalty applied on every update of a vector (keeps norms bounded in a stream).
    n_negatives: sampled negatives per positive (``learn_one``), each pushed towards 0.
    negative_weight: weight of a sampled negative relative to the positive it comes with (a
        sampled negative is weaker evidence than an explicit one).
    negatives: ``"popularity"``, ``"uniform"`` or ``"lru"`` (see the module docstring).
    window: number of recent positives the popularity sampler draws from.
    loss: ``"logistic"`` (error ``target - sigmoid(score)``: bounded steps, so a heavy ``weight``
        or a high ``lr`` cannot blow vectors up) or ``"squared"`` (ISGD: ``target - score``).
    use_bias: learn a per-item bias (popularity); without it scores are pure dot products.
    init_scale: standard deviation of new rows.
    seed: seeds new rows (with their id) and negative sampling.
    """

    def __init__(self, n_factors: int = 32, lr: float = 0.25, l2: float = 0.001,
                 n_negatives: int = 8, negative_weight: float = 0.5, negatives: str = "lru",
                 window: int = 10_000, loss: str = "logistic", use_bias: bool = True,
                 bias_lr: float | None = None, init_scale: float = 0.1, seed: int = 0,
                 initial_capacity: int = 1024) -> None:
        if negatives not in NEGATIVE_SAMPLERS:
            raise ValueError(f"negatives must be one of {NEGATIVE_SAMPLERS}, not {negatives!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, not {loss!r}")
        self.n_factors = int(n_factors)
        self.lr = float(lr)
        self.l2 = float(l2)
        self.n_negatives = int(n_negatives)
        self.negative_weight = float(negative_weight)
        self.negatives = negatives
        self.window = int(window)
        self.loss = loss
        self.use_bias = bool(use_bias)
        self.bias_lr = self.lr if bias_lr is None else float(bias_lr)
        self.init_scale = float(init_scale)
        self.seed = int(seed)
        self._rng = np.random.default_rng(seed)
        cap = max(int(initial_capacity), 1)
        self._user_row: dict[str, int] = {}
        self._user_ids: list[str] = []
        self._item_row: dict[str, int] = {}
        self._item_ids: list[str] = []
        self._U = np.zeros((cap, self.n_factors), dtype=np.float32)
        self._V = np.zeros((cap, self.n_factors), dtype=np.float32)
        self._b = np.zeros(cap, dtype=np.float32)
        self._recent = np.zeros(self.window, dtype=np.int64)  # ring buffer of positive item rows
        self._n_positives = 0
        self._lru: OrderedDict[int, None] = OrderedDict()  # item rows, least recent first
        self._dirty: set[int] = set()
        self._queued: list[Step] | None = None  # see deferred()

    # ------------------------------------------------------------------ rows

    @property
    def n_users(self) -> int:
        return len(self._user_ids)

    @property
    def n_items(self) -> int:
        return len(self._item_ids)

    @property
    def item_ids(self) -> list[str]:
        """Known item ids in row order: ``score_items(u)[r]`` is the score of ``item_ids[r]``.

        The model's own list, not a copy (catalogues are large): do not mutate it.
        """
        return self._item_ids

    def _init_row(self, kind: str, key: str) -> np.ndarray:
        # ~50 us per new row (a seeded Generator). Cheaper draws were tried (hashed Box-Muller
        # normals, rows of a shared normals table): each is another random start, and MovieLens
        # 100K HitRate@10 moved from 0.1982 to 0.1967 / 0.1964, within the spread of init draws
        # but a change of every published figure, for ~1 s per 20k new rows.
        digest = hashlib.blake2b(f"{self.seed}:{kind}:{key}".encode(), digest_size=8).digest()
        rng = np.random.default_rng(int.from_bytes(digest, "little"))
        return rng.normal(0.0, self.init_scale, self.n_factors).astype(np.float32)

    def _user(self, user_id: str) -> int:
        row = self._user_row.get(user_id)
        if row is None:
            row = len(self._user_ids)
            self._U = grown(self._U, row + 1)
            self._U[row] = self._init_row("u", user_id)
            self._user_row[user_id] = row
            self._user_ids.append(user_id)
        return row

    def _item(self, item_id: str) -> int:
        row = self._item_row.get(item_id)
        if row is None:
            row = len(self._item_ids)
            if row + 1 > self._V.shape[0]:
                self._V = grown(self._V, row + 1)
                self._b = grown(self._b, row + 1)
            self._V[row] = self._init_row("i", item_id)
            self._item_row[item_id] = row
            self._item_ids.append(item_id)
            self._lru[row] = None
            self._dirty.add(row)
        return row

    # ------------------------------------------------------------------ learning

    def learn_one(self, user_id: str, item_id: str, weight: float = 1.0, ts: int | None = None) -> None:
        """Learn one positive interaction (``weight`` from the event type, e.g. conversion > click).

        Also draws ``n_negatives`` negatives for the user (never the positive item itself) and
        learns all of them in one vectorised step. ``ts`` is accepted for River compatibility and
        future time-aware variants; learning is in arrival order.
        """
        u = self._user(user_id)
        i = self._item(item_id)
        self._step(u, [i, *self._sample_negatives(i)], 1.0, weight, self.negative_weight * weight)
        self._recent[self._n_positives % self.window] = i
        self._n_positives += 1
        if self.negatives == "lru":
            self._lru.move_to_end(i)

    def learn_negative(self, user_id: str, item_id: str, weight: float = 1.0) -> None:
        """Learn one explicit negative: the user saw ``item_id`` and did not engage (or dismissed it).

        Use a smaller ``weight`` for weak evidence (an impression without a click) than for strong
        evidence (a dismissal).
        """
        u = self._user(user_id)
        i = self._item(item_id)
        self._step(u, [i], 0.0, weight, weight)

    def learn_negatives(self, user_id: str, item_ids: Sequence[str], weight: float = 1.0) -> None:
        """Learn several explicit negatives of one user in one vectorised step (e.g. the items of
        an impression, with a small ``weight``; the clicked one is then learned as a positive)."""
        if not item_ids:
            return
        u = self._user(user_id)
        self._step(u, list(dict.fromkeys(self._item(i) for i in item_ids)), 0.0, weight, weight)

    def knows_user(self, user_id: str) -> bool:
        return user_id in self._user_row

    def knows_item(self, item_id: str) -> bool:
        return item_id in self._item_row

    def _sample_negatives(self, positive: int) -> list[int]:
        n = self.n_negatives
        if n <= 0:
            return []
        if self.negatives == "lru":
            out = []
            for row in self._lru:
                if row != positive:
                    out.append(row)
                    if len(out) == n:
                        break
            for row in out:
                self._lru.move_to_end(row)
            return out
        if self.negatives == "popularity" and self._n_positives:
            pool = self._recent
            size = min(self._n_positives, self.window)
        else:
            pool = None
            size = len(self._item_ids)
        if size <= 1:
            return []
        picks = (self._rng.random(n) * size).astype(np.int64)
        rows = pool[picks] if pool is not None else picks
        # distinct, and never the positive: duplicate rows in one fancy-indexed update would
        # silently keep only the last write
        return [r for r in dict.fromkeys(rows.tolist()) if r != positive]

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Queue the SGD steps of every ``learn_*`` call inside the block and apply them at its
        end, vectorised (the batch variant for a consume batch: a numpy step costs ~20 small
        array operations, most of an event's learning time when done one event at a time).

        The result is that of learning the same events one by one, in order: the queued steps
        are split into rounds in which no user or item row appears twice, each step after every
        earlier step that shares a row with it, and each round is one vectorised step. Reads
        inside the block see the vectors as they were before it. Nested blocks join the outer one.
        (Summing the steps instead, Hogwild-style, was tried and is wrong here: a hot item is in
        hundreds of a batch's slates, and hundreds of negative steps on its bias taken at the
        same score overshoot where the logistic loss, step by step, would have saturated.)
        """
        if self._queued is not None:
            yield
            return
        self._queued = []
        try:
            yield
        finally:
            queued, self._queued = self._queued, None
            self._apply_queued(queued)

    def _apply_queued(self, steps: list[Step]) -> None:
        if len(steps) == 1:
            self._step_now(*steps[0])
            return
        rounds: list[list[Step]] = []
        user_round: dict[int, int] = {}
        item_round: dict[int, int] = {}
        for step in steps:
            u, rows = step[0], step[1]
            r = max(user_round.get(u, -1), max(item_round.get(row, -1) for row in rows)) + 1
            user_round[u] = r
            for row in rows:
                item_round[row] = r
            if r == len(rounds):
                rounds.append([])
            rounds[r].append(step)
        for members in rounds:
            if len(members) == 1:
                self._step_now(*members[0])
            else:
                self._step_round(members)

    def _step_round(self, steps: list[Step]) -> None:
        """:meth:`_step_now` of several steps at once; no user or item row appears in two of them."""
        m = len(steps)
        us = np.fromiter((s[0] for s in steps), dtype=np.intp, count=m)
        lengths = np.fromiter((len(s[1]) for s in steps), dtype=np.intp, count=m)
        starts = np.zeros(m, dtype=np.intp)
        np.cumsum(lengths[:-1], out=starts[1:])
        total = int(starts[-1] + lengths[-1])
        idx = np.fromiter(chain.from_iterable(s[1] for s in steps), dtype=np.intp, count=total)
        targets = np.zeros(total, dtype=np.float32)
        targets[starts] = np.fromiter((s[2] for s in steps), dtype=np.float32, count=m)
        weights = np.repeat(np.fromiter((s[4] for s in steps), dtype=np.float32, count=m), lengths)
        weights[starts] = np.fromiter((s[3] for s in steps), dtype=np.float32, count=m)
        P = self._U[us]
        Pr = np.repeat(P, lengths, axis=0)
        Q = self._V[idx]
        b = self._b[idx]
        score = np.einsum("ij,ij->i", Q, Pr) + b
        if self.loss == "logistic":
            score = 1.0 / (1.0 + np.exp(-np.minimum(np.maximum(score, -30.0), 30.0)))
        g = (targets - score) * weights
        lr, l2 = self.lr, self.l2
        gQ = np.add.reduceat(g[:, None] * Q, starts, axis=0)
        wmax = np.maximum.reduceat(weights, starts)
        self._U[us] = P + lr * (gQ - (l2 * wmax)[:, None] * P)
        self._V[idx] = Q + lr * (g[:, None] * Pr - (l2 * weights)[:, None] * Q)
        if self.use_bias:
            self._b[idx] = b + self.bias_lr * (g - l2 * weights * b)
        for s in steps:
            self._dirty.update(s[1])

    def _step(self, u: int, rows: list[int], first_target: float, first_weight: float, rest_weight: float) -> None:
        """One SGD step on the user's row and the item rows ``rows``: the first towards
        ``first_target`` with ``first_weight``, the others towards 0 with ``rest_weight`` (a
        positive and its sampled negatives, or explicit negatives). Queued inside
        :meth:`deferred` as the plain tuple (no arrays per event: they are built per round)."""
        if self._queued is not None:
            self._queued.append((u, rows, first_target, first_weight, rest_weight))
            return
        self._step_now(u, rows, first_target, first_weight, rest_weight)

    def _step_now(self, u: int, rows: list[int], first_target: float, first_weight: float,
                  rest_weight: float) -> None:
        n = len(rows)
        idx = np.asarray(rows, dtype=np.intp)  # once: fancy indexing with a list converts it each time
        targets = np.zeros(n, dtype=np.float32)
        targets[0] = first_target
        weights = np.full(n, rest_weight, dtype=np.float32)
        weights[0] = first_weight
        p = self._U[u].copy()
        Q = self._V[idx]
        b = self._b[idx]
        score = Q @ p + b
        if self.loss == "logistic":  # minimum/maximum: np.clip's wrapper costs more than both
            score = 1.0 / (1.0 + np.exp(-np.minimum(np.maximum(score, -30.0), 30.0)))
        g = (targets - score) * weights  # gradient of the loss w.r.t. the score, sign flipped
        # the L2 pull is weighted like the evidence, so a weight-0 event changes nothing
        lr, l2 = self.lr, self.l2
        self._U[u] = p + lr * (g @ Q - (l2 * float(weights.max())) * p)
        self._V[idx] = Q + lr * (g[:, None] * p - (l2 * weights)[:, None] * Q)
        if self.use_bias:
            self._b[idx] = b + self.bias_lr * (g - l2 * weights * b)
        self._dirty.update(rows)

    def _flush_queued(self) -> None:
        """Apply the steps queued so far inside :meth:`deferred` (the block goes on queueing)."""
        if self._queued:
            queued, self._queued = self._queued, []
            self._apply_queued(queued)

    def forget_user(self, user_id: str) -> bool:
        """Drop a user's vector (``user_delete``): the row is overwritten, not just unlinked."""
        self._flush_queued()  # queued steps name rows, and this moves one
        row = self._user_row.pop(user_id, None)
        if row is None:
            return False
        last = len(self._user_ids) - 1
        if row != last:
            moved = self._user_ids[last]
            self._U[row] = self._U[last]
            self._user_ids[row] = moved
            self._user_row[moved] = row
        self._U[last] = 0.0
        self._user_ids.pop()
        return True

    # ------------------------------------------------------------------ reading

    def user_vector(self, user_id: str) -> np.ndarray:
        """A copy of the user's vector; zeros (the prior mean) for an unknown user."""
        row = self._user_row.get(user_id)
        if row is None:
            return np.zeros(self.n_factors, dtype=np.float32)
        return self._U[row].copy()

    def item_vector(self, item_id: str) -> np.ndarray:
        """A copy of the item's vector; zeros for an unknown item."""
        row = self._item_row.get(item_id)
        if row is None:
            return np.zeros(self.n_factors, dtype=np.float32)
        return self._V[row].copy()

    def _mean_bias(self) -> float:
        return float(self._b[: self.n_items].mean()) if self._item_ids else 0.0

    def item_bias(self, item_id: str) -> float:
        """The item's bias; the mean bias of known items for an unknown item."""
        row = self._item_row.get(item_id)
        return float(self._b[row]) if row is not None else self._mean_bias()

    def predict_one(self, user_id: str, item_id: str) -> float:
        """Score of ``item_id`` for ``user_id`` (higher is better; not a probability)."""
        return float(self.user_vector(user_id) @ self.item_vector(item_id) + self.item_bias(item_id))

    def row_of(self, item_id: str) -> int:
        """The item's row in the factor matrix (-1: unknown); rows never change once assigned."""
        return self._item_row.get(item_id, -1)

    def rows_of(self, item_ids: Sequence[str]) -> np.ndarray:
        """Row of each item in the factor matrix (-1: unknown), to look items up once per list."""
        get = self._item_row.get
        return np.fromiter((get(i, -1) for i in item_ids), dtype=np.int64, count=len(item_ids))

    def score_items(self, user_id: str, item_ids: Iterable[str] | None = None) -> np.ndarray:
        """Scores of ``item_ids`` for the user (float32), or of all known items in row order
        (aligned with :attr:`item_ids`) when ``item_ids`` is None. One matrix-vector product.
        """
        if item_ids is None:
            n = self.n_items
            return self._V[:n] @ self.user_vector(user_id) + self._b[:n]
        return self.score_rows(user_id, self.rows_of(list(item_ids)))

    def score_rows(self, user_id: str, rows: np.ndarray) -> np.ndarray:
        """:meth:`score_items` for rows from :meth:`rows_of`."""
        p = self.user_vector(user_id)
        known = rows >= 0
        out = np.full(len(rows), 0.0 if known.all() else self._mean_bias(), dtype=np.float32)
        if known.any():
            r = rows[known]
            out[known] = self._V[r] @ p + self._b[r]
        return out

    def mean_item_vector(self, anchors: Sequence[str], weights: Sequence[float]) -> np.ndarray | None:
        """The weighted mean vector of the known ``anchors`` (None when none is known)."""
        get = self._item_row.get
        a = [(get(i), w) for i, w in zip(anchors, weights)]
        a = [(r, w) for r, w in a if r is not None]
        if not a:
            return None
        return (np.asarray([w for _, w in a], dtype=np.float32) @ self._V[[r for r, _ in a]]) / sum(w for _, w in a)

    def item_similarity(self, item_ids: Sequence[str], anchors: Sequence[str],
                        weights: Sequence[float], rows: np.ndarray | None = None) -> np.ndarray:
        """Cosine of each item's vector with the weighted mean vector of ``anchors`` (e.g. the
        user's recent items): item-to-item similarity in the MF space, 0 where unknown.
        ``rows``: the items' :meth:`rows_of`, when the caller has them already."""
        out = np.zeros(len(item_ids), dtype=np.float32)
        q = self.mean_item_vector(anchors, weights)
        qn = 0.0 if q is None else float(np.linalg.norm(q))
        if qn == 0.0 or not len(item_ids):
            return out
        if rows is None:
            rows = self.rows_of(item_ids)
        known = rows >= 0
        if known.any():
            V = self._V[rows[known]]
            norms = np.linalg.norm(V, axis=1)
            out[known] = (V @ q) / (np.maximum(norms, 1e-9) * qn)
        return out

    def mean_of_rows(self, rows: np.ndarray, weights: np.ndarray) -> np.ndarray | None:
        """:meth:`mean_item_vector` for rows from :meth:`rows_of` (-1: unknown, skipped)."""
        known = rows >= 0
        if known.all():
            w = np.asarray(weights, dtype=np.float64)
            return (w.astype(np.float32) @ self._V[rows]) / float(w.sum())
        if not known.any():
            return None
        w = np.asarray(weights, dtype=np.float64)[known]
        return (w.astype(np.float32) @ self._V[rows[known]]) / float(w.sum())

    def user_vectors(self, user_ids: Sequence[str]) -> np.ndarray:
        """:meth:`user_vector` of each user, as rows of one float32 matrix (a copy)."""
        get = self._user_row.get
        rows = np.fromiter((get(u, -1) for u in user_ids), dtype=np.int64, count=len(user_ids))
        out = np.zeros((len(rows), self.n_factors), dtype=np.float32)
        known = rows >= 0
        out[known] = self._U[rows[known]]
        return out

    # ------------------------------------------------------------------ ANN support

    @property
    def index_dim(self) -> int:
        """Dimension of :meth:`index_vectors` (one more than ``n_factors`` when biases are used)."""
        return self.n_factors + (1 if self.use_bias else 0)

    def index_vectors(self, item_ids: Sequence[str]) -> np.ndarray:
        """Item vectors for an inner-product index: ``[vector, bias]`` per item, so that
        ``query_vector(u) . index_vectors([i])[0] == predict_one(u, i)``."""
        rows = np.fromiter((self._item_row.get(i, -1) for i in item_ids), dtype=np.int64,
                           count=len(item_ids))
        out = np.zeros((len(rows), self.index_dim), dtype=np.float32)
        known = rows >= 0
        out[known, : self.n_factors] = self._V[rows[known]]
        if self.use_bias:
            out[known, -1] = self._b[rows[known]]
            if not known.all():
                out[~known, -1] = self._mean_bias()
        return out

    def query_vector(self, user_id: str) -> np.ndarray:
        """The user's query for an index built from :meth:`index_vectors` (``[vector, 1]``)."""
        p = self.user_vector(user_id)
        return np.append(p, np.float32(1.0)) if self.use_bias else p

    def query_vectors(self, user_ids: Sequence[str]) -> np.ndarray:
        """:meth:`query_vector` of each user, as rows of one matrix (for a batch of ANN queries)."""
        U = self.user_vectors(user_ids)
        return np.hstack([U, np.ones((len(U), 1), dtype=np.float32)]) if self.use_bias else U

    def dirty_items(self) -> list[str]:
        """Items whose vector or bias changed (or that are new) since :meth:`clear_dirty`."""
        ids = self._item_ids
        return [ids[r] for r in self._dirty]

    def clear_dirty(self, item_ids: Iterable[str] | None = None) -> None:
        """Forget the dirty marks of ``item_ids`` (all when None), once they are re-indexed."""
        if item_ids is None:
            self._dirty.clear()
            return
        for item_id in item_ids:
            row = self._item_row.get(item_id)
            if row is not None:
                self._dirty.discard(row)

    # ------------------------------------------------------------------ checkpoints

    def params(self) -> dict:
        return {"n_factors": self.n_factors, "lr": self.lr, "l2": self.l2,
                "n_negatives": self.n_negatives, "negative_weight": self.negative_weight,
                "negatives": self.negatives, "window": self.window, "loss": self.loss,
                "use_bias": self.use_bias, "bias_lr": self.bias_lr,
                "init_scale": self.init_scale, "seed": self.seed}

    def to_state(self) -> dict:
        """Everything needed to continue exactly where this model is: hyper-parameters, id lists
        (row order), trimmed float32 arrays, sampler state and RNG state. Arrays are copies."""
        self._flush_queued()
        nu, ni = self.n_users, self.n_items
        size = min(self._n_positives, self.window)
        return {
            "version": STATE_VERSION,
            "params": self.params(),
            "user_ids": list(self._user_ids),
            "item_ids": list(self._item_ids),
            "user_factors": self._U[:nu].copy(),
            "item_factors": self._V[:ni].copy(),
            "item_bias": self._b[:ni].copy(),
            "n_positives": self._n_positives,
            "recent": self._recent[:size].copy(),
            "lru": np.fromiter(self._lru, dtype=np.int64, count=len(self._lru)),
            "dirty": np.fromiter(sorted(self._dirty), dtype=np.int64, count=len(self._dirty)),
            "rng": self._rng.bit_generator.state,
        }

    @classmethod
    def from_state(cls, state: dict) -> "OnlineMF":
        """The model saved by :meth:`to_state`."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported OnlineMF state version {state.get('version')!r}")
        model = cls(**state["params"], initial_capacity=max(len(state["item_ids"]),
                                                            len(state["user_ids"]), 1))
        model._user_ids = list(state["user_ids"])
        model._user_row = {u: r for r, u in enumerate(model._user_ids)}
        model._item_ids = list(state["item_ids"])
        model._item_row = {i: r for r, i in enumerate(model._item_ids)}
        nu, ni = len(model._user_ids), len(model._item_ids)
        model._U[:nu] = state["user_factors"]
        model._V[:ni] = state["item_factors"]
        model._b[:ni] = state["item_bias"]
        model._n_positives = int(state["n_positives"])
        recent = np.asarray(state["recent"], dtype=np.int64)
        model._recent[: len(recent)] = recent
        model._lru = OrderedDict((int(r), None) for r in state["lru"])
        model._dirty = {int(r) for r in state["dirty"]}
        model._rng.bit_generator.state = state["rng"]
        return model

    def __repr__(self) -> str:
        return (f"OnlineMF(n_factors={self.n_factors}, lr={self.lr}, l2={self.l2}, "
                f"n_negatives={self.n_negatives}, negatives={self.negatives!r}, "
                f"users={self.n_users}, items={self.n_items})")
