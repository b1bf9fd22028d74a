"""Content-based item retrieval: find items for a user before anyone has clicked them.

Why: every other retrieval source here (co-visitation, trending, the matrix factorisation in
:mod:`freshrec.state.embeddings`) learns from interactions, so a catalogue item upserted a moment
ago has no signal in any of them and cannot be recommended until it gets clicks, which it cannot
get without being recommended (item cold start). Its *attributes* are known at once, though:
category, tags and text from the ``item_upsert`` event (see :class:`~freshrec.state.catalogue.
Catalogue` for the row format). :class:`ContentEncoder` turns those into a vector and
:class:`ContentIndex` keeps the vectors of live items in an :class:`~freshrec.state.ann.ItemIndex`
(``space="cosine"``), so a user profile (:meth:`ContentIndex.profile`: the mean vector of the
items they engaged with) retrieves new items that look like what they liked.

Why a hashed bag of words rather than a learned text embedding (a sentence-transformer or
similar): no model may be downloaded at run time, and this costs microseconds per item with
nothing but the standard library and numpy, so encoding can run inline on the catalogue stream.
Feature hashing (Weinberger et al., 2009) needs no vocabulary, so there is no state to fit,
share between workers or checkpoint, and an unseen word costs nothing special: a token goes to
slot ``crc32(token) % dim`` with a sign taken from another bit of the same hash, and the sign
makes collisions cancel on average instead of adding up. ``zlib.crc32`` (not Python's
``hash()``, which is salted per process) keeps vectors identical across workers and restarts.
What it cannot do is match synonyms ("spaceship" vs "starship"); it matches exact categories,
tags and words, which is what a cold item has.

The index is updated in batches: :meth:`ContentIndex.upsert` / :meth:`ContentIndex.delete` only
queue (and update the id -> vector dict kept beside the index, so :meth:`ContentIndex.vector`,
:meth:`~ContentIndex.profile` and :meth:`~ContentIndex.similarity` see a change at once), and
:meth:`ContentIndex.flush`, called on an interval, applies the queue in one
:meth:`ItemIndex.upsert_many` batch. Only :meth:`ContentIndex.query` lags behind by up to one
interval.
"""

from __future__ import annotations

import math
import re
import zlib
from typing import Collection, Mapping, Sequence

import numpy as np

from freshrec.state.ann import ItemIndex

STATE_VERSION = 1

_WORD = re.compile(r"[^\W_]+")  # runs of letters and digits (Unicode aware), underscores split

#: Common English function words: they appear in most texts and carry no topic.
STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had
has have having he her here hers herself him himself his how if in into is it its itself just
me more most my myself no nor not now of off on once only or other our ours ourselves out over
own same she should so some such than that the their theirs them themselves then there these
they this those through to too under until up very was we were what when where which while who
whom why will with would you your yours yourself yourselves
""".split())


class ContentEncoder:
    """Hashed bag of words of an item's attributes -> L2-normalised float32 vector (feature
    hashing with a sign hash).

    Tokens (see :meth:`tokens`) and their weights:

    * ``"c:<category>"``, weight ``category_weight``;
    * ``"t:<tag>"`` per distinct tag, weight ``tag_weight``;
    * ``"w:<word>"`` per distinct word of the text, weight ``text_weight * (1 + ln tf)`` where
      ``tf`` is the number of occurrences (sublinear, so a repeated word does not swamp the rest).

    Categories, tags and words are lowercased and stripped; words are runs of letters and digits
    of length 2 or more, minus :data:`STOPWORDS`. The prefixes keep the fields apart: the tag
    "space" and the word "space" are different features. The encoder holds only its parameters:
    two encoders with the same parameters give the same vectors in any process.
    """

    def __init__(self, dim: int = 128, category_weight: float = 2.0, tag_weight: float = 1.5,
                 text_weight: float = 1.0) -> None:
        if int(dim) < 1:
            raise ValueError(f"dim must be positive, not {dim!r}")
        self.dim = int(dim)
        self.category_weight = float(category_weight)
        self.tag_weight = float(tag_weight)
        self.text_weight = float(text_weight)

    def params(self) -> dict:
        return {"dim": self.dim, "category_weight": self.category_weight,
                "tag_weight": self.tag_weight, "text_weight": self.text_weight}

    def tokens(self, row: Mapping | None) -> list[tuple[str, float]]:
        """The weighted tokens of ``row``: category first, then tags, then words, each in order of
        first appearance; every token once."""
        if not row:
            return []
        out: list[tuple[str, float]] = []
        category = row.get("category")
        if category is not None:
            category = str(category).strip().lower()
            if category:
                out.append(("c:" + category, self.category_weight))
        tags = row.get("tags") or ()
        if isinstance(tags, str):
            tags = (tags,)
        seen: set[str] = set()
        for tag in tags:
            tag = str(tag).strip().lower()
            if tag and tag not in seen:
                seen.add(tag)
                out.append(("t:" + tag, self.tag_weight))
        text = row.get("text")
        if text:
            tf: dict[str, int] = {}
            get = tf.get
            for w in _WORD.findall(str(text).lower()):
                if len(w) >= 2 and w not in STOPWORDS:
                    tf[w] = get(w, 0) + 1
            tw = self.text_weight
            log = math.log
            out.extend(("w:" + w, tw if n == 1 else tw * (1.0 + log(n))) for w, n in tf.items())
        return out

    def encode(self, row: Mapping | None) -> np.ndarray:
        """``row``'s vector: shape ``(dim,)``, float32, unit norm; all zeros when the row (or
        ``None``) has no tokens."""
        toks = self.tokens(row)
        if not toks:
            return np.zeros(self.dim, dtype=np.float32)
        dim = self.dim
        acc = [0.0] * dim  # a Python list: per-element updates are far cheaper than on an array
        crc32 = zlib.crc32
        for token, weight in toks:
            h = crc32(token.encode("utf-8"))
            # the low bits pick the slot, the top bit the sign
            acc[h % dim] += -weight if h & 0x80000000 else weight
        vec = np.array(acc, dtype=np.float64)
        norm = math.sqrt(float(vec @ vec))
        if norm < 1e-12:  # only if colliding tokens cancel exactly
            return np.zeros(dim, dtype=np.float32)
        return (vec / norm).astype(np.float32)

    def __repr__(self) -> str:
        return (f"ContentEncoder(dim={self.dim}, category_weight={self.category_weight}, "
                f"tag_weight={self.tag_weight}, text_weight={self.text_weight})")


class ContentIndex:
    """Content vectors of live catalogue items in an :class:`ItemIndex` (``space="cosine"``),
    kept current in batches.

    Beside the index a dict maps each live item to its (read-only, unit-norm) vector. Writes
    update the dict at once and queue the index change; :meth:`flush` applies the queue. So
    :meth:`vector`, :meth:`profile`, :meth:`similarity` and ``len()`` are always current, and
    :meth:`query` sees the items as of the last :meth:`flush`.

    Re-upserting an item with unchanged attributes (same vector) queues nothing. The index
    reinserts a changed item under a new slot and only hides deleted ones (see
    :class:`ItemIndex`); call :meth:`rebuild` when :meth:`needs_rebuild` says so.
    """

    def __init__(self, encoder: ContentEncoder | None = None, M: int = 16,
                 ef_construction: int = 100, ef: int = 64) -> None:
        self.encoder = ContentEncoder() if encoder is None else encoder
        self.dim = self.encoder.dim
        self.index = ItemIndex(self.dim, space="cosine", M=M, ef_construction=ef_construction, ef=ef)
        self._vectors: dict[str, np.ndarray] = {}  # live item -> its vector (current)
        self._dirty: dict[str, None] = {}  # queued upserts (ordered set); vectors in _vectors
        self._removed: set[str] = set()  # queued removals of indexed items

    # ------------------------------------------------------------------ writes

    def upsert(self, item_id: str, row: Mapping) -> None:
        """Queue ``item_id`` with the vector of catalogue ``row``; a deleted row or one without
        tokens queues its removal instead."""
        if row is None or row.get("deleted"):
            self.delete(item_id)
            return
        vec = self.encoder.encode(row)
        if not vec.any():
            self.delete(item_id)
            return
        old = self._vectors.get(item_id)
        if old is not None and np.array_equal(old, vec):
            return  # same attributes: already indexed or queued
        vec.flags.writeable = False
        self._vectors[item_id] = vec
        self._dirty[item_id] = None
        self._removed.discard(item_id)

    def delete(self, item_id: str) -> None:
        """Queue the removal of ``item_id`` (no-op if unknown)."""
        self._vectors.pop(item_id, None)
        self._dirty.pop(item_id, None)
        if item_id in self.index:
            self._removed.add(item_id)

    def flush(self) -> int:
        """Apply the queued upserts (in one :meth:`ItemIndex.upsert_many` batch) and removals;
        returns the number of items changed in the index. Call on an interval, never per event."""
        removed = 0
        for item in self._removed:
            removed += self.index.mark_deleted(item)
        ids = list(self._dirty)
        if ids:
            vectors = self._vectors
            self.index.upsert_many(ids, np.stack([vectors[i] for i in ids]))
        self._dirty.clear()
        self._removed.clear()
        return removed + len(ids)

    @property
    def n_pending(self) -> int:
        """Queued upserts and removals not flushed yet."""
        return len(self._dirty) + len(self._removed)

    def needs_rebuild(self) -> bool:
        """True once the index holds too many replaced or deleted slots (:meth:`ItemIndex.needs_rebuild`)."""
        return self.index.needs_rebuild()

    def rebuild(self) -> None:
        """Flush, then rebuild the graph from the live vectors only (drops stale slots)."""
        self.flush()
        ids = list(self._vectors)
        vecs = np.stack([self._vectors[i] for i in ids]) if ids else np.zeros((0, self.dim), np.float32)
        self.index.rebuild(ids, vecs)

    # ------------------------------------------------------------------ reads

    def __len__(self) -> int:
        """Live items with a vector (including queued, not yet flushed ones)."""
        return len(self._vectors)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._vectors

    def vector(self, item_id: str) -> np.ndarray | None:
        """``item_id``'s content vector (read-only), also when not flushed yet; None if unknown or
        deleted."""
        return self._vectors.get(item_id)

    def profile(self, item_ids: Sequence[str],
                weights: Sequence[float] | None = None) -> np.ndarray | None:
        """Unit-norm weighted mean of the vectors of the known ``item_ids`` (unknown ones are
        skipped, e.g. deleted items in a user's history); None when none is known (or the weights
        cancel out)."""
        if weights is not None and len(weights) != len(item_ids):
            raise ValueError(f"{len(weights)} weights for {len(item_ids)} items")
        get = self._vectors.get
        rows, ws = [], []
        for p, item in enumerate(item_ids):
            vec = get(item)
            if vec is not None:
                rows.append(vec)
                ws.append(1.0 if weights is None else float(weights[p]))
        if not rows:
            return None
        prof = np.asarray(ws, dtype=np.float32) @ np.stack(rows)
        norm = float(np.linalg.norm(prof))
        if norm < 1e-12:
            return None
        return (prof / norm).astype(np.float32)

    def similarity(self, profile: np.ndarray | None, item_ids: Sequence[str]) -> np.ndarray:
        """Cosine of ``profile`` with each item's vector: float32, one per item, 0.0 for unknown
        items (and for all when ``profile`` is None or zero)."""
        out = np.zeros(len(item_ids), dtype=np.float32)
        if profile is None or not len(item_ids):
            return out
        prof = np.asarray(profile, dtype=np.float32).reshape(-1)
        norm = float(np.linalg.norm(prof))
        if norm < 1e-12:
            return out
        get = self._vectors.get
        pos, rows = [], []
        for p, item in enumerate(item_ids):
            vec = get(item)
            if vec is not None:
                pos.append(p)
                rows.append(vec)
        if rows:
            out[pos] = np.stack(rows) @ (prof / norm)
        return out

    def query(self, profile: np.ndarray | None, k: int,
              exclude: Collection[str] = frozenset()) -> list[tuple[str, float]]:
        """Up to ``k`` ``(item_id, cosine)`` nearest to ``profile``, best first, none in
        ``exclude``; approximate, over the items as of the last :meth:`flush`."""
        if profile is None or k <= 0:
            return []
        prof = np.asarray(profile, dtype=np.float32).reshape(-1)
        if not prof.any():
            return []
        return self.index.query(prof, k, exclude=exclude)

    # ------------------------------------------------------------------ checkpoints

    def to_state(self) -> dict:
        """Plain, picklable data (no hnswlib object): parameters, live ids with their vectors as
        one float32 matrix, the queues, and the indexed vectors the queues will replace or remove
        (so :meth:`from_state` restores the index exactly as it is, not as it would be after a
        flush)."""
        ids = list(self._vectors)
        vecs = (np.stack([self._vectors[i] for i in ids]) if ids
                else np.zeros((0, self.dim), dtype=np.float32))
        index = self.index
        stale = [i for i in self._dirty if i in index] + [i for i in self._removed if i in index]
        return {
            "version": STATE_VERSION,
            "encoder": self.encoder.params(),
            "index": {"M": index.M, "ef_construction": index.ef_construction, "ef": index.ef},
            "item_ids": ids,
            "vectors": vecs.astype(np.float32, copy=True),
            "pending": list(self._dirty),
            "removed": list(self._removed),
            "stale_ids": stale,
            "stale_vectors": index.vectors(stale).copy(),
        }

    @classmethod
    def from_state(cls, state: dict) -> "ContentIndex":
        """The index saved by :meth:`to_state`; the hnswlib graph is rebuilt from the vectors in
        one batch."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported ContentIndex state version {state.get('version')!r}")
        self = cls(ContentEncoder(**state["encoder"]), **state["index"])
        dim = self.dim
        ids = list(state["item_ids"])
        vecs = np.array(state["vectors"], dtype=np.float32).reshape(len(ids), dim)
        vecs.flags.writeable = False  # rows below are views of it, handed out by vector()
        self._vectors = dict(zip(ids, vecs))
        self._dirty = dict.fromkeys(state["pending"])
        self._removed = set(state["removed"])
        stale_ids = list(state["stale_ids"])
        stale = np.asarray(state["stale_vectors"], dtype=np.float32).reshape(len(stale_ids), dim)
        keep = [p for p, i in enumerate(ids) if i not in self._dirty]
        indexed_ids = [ids[p] for p in keep] + stale_ids
        if indexed_ids:
            self.index = self.index.rebuilt(indexed_ids, np.vstack([vecs[keep], stale]))
        return self

    def __repr__(self) -> str:
        return (f"ContentIndex(dim={self.dim}, items={len(self)}, indexed={len(self.index)}, "
                f"pending={self.n_pending})")
