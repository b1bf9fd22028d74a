"""Data sets as event streams, for replays, tests, evaluation and benchmarks.

Every loader yields contract-shaped event dicts (see :mod:`freshrec.streams.schema`):

* catalogue events (``item_upsert``) first, then interactions in **event-time order** (ties
  keep their order in the source file);
* **deterministic** ``event_id`` values derived from the source rows, so replaying the same data
  twice is harmless downstream (the worker skips events it has already applied);
* ids as strings, ``ts`` in epoch milliseconds.

:func:`load_dataset` turns a spec string (what ``freshrec replay --dataset`` takes) into an
iterable :class:`Dataset` whose ``total`` is the number of events when it is cheap to know.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

__all__ = ["Dataset", "load_dataset", "DATASET_KINDS", "SPEC_HELP"]

DATASET_KINDS = ("synthetic", "movielens", "mind")

SPEC_HELP = ("synthetic, synthetic:users=500,items=1000,categories=10,events=50000,seed=0[,realtime=1], "
             "movielens:PATH (dir or u.data / ratings.csv), mind:PATH (dir or behaviors.tsv), "
             "mind+history:PATH (also replays each user's earlier clicks)")


class Dataset:
    """An iterable of events. ``total`` (and ``len()``) give the event count, for progress bars.

    Subclasses implement :meth:`__iter__` and :meth:`_count`; the count is computed once, on
    first use (for file data sets it comes from parsing, which iteration needs anyway).
    """

    name: str = "dataset"

    def __iter__(self) -> Iterator[dict]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _count(self) -> int | None:
        return None

    @property
    def total(self) -> int | None:
        """Number of events this data set yields, or None when unknown."""
        if not hasattr(self, "_total_cache"):
            self._total_cache = self._count()
        return self._total_cache

    def __len__(self) -> int:
        total = self.total
        if total is None:
            raise TypeError(f"{self.name}: size unknown")
        return total

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


def _parse_int(key: str, raw: str) -> int:
    try:
        return int(raw.replace("_", ""))
    except ValueError:
        raise ValueError(f"synthetic option {key}={raw!r}: expected an integer") from None


_SYNTHETIC_KEYS = {"users": "n_users", "items": "n_items", "categories": "n_categories",
                   "events": "n_events", "seed": "seed", "start_ms": "start_ms", "realtime": "realtime"}


def _synthetic_options(text: str) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, raw = part.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"synthetic option {part!r}: expected key=value")
        if key not in _SYNTHETIC_KEYS:
            raise ValueError(f"unknown synthetic option {key!r}; known: {', '.join(_SYNTHETIC_KEYS)}")
        raw = raw.strip()
        if key == "realtime":
            opts["realtime"] = raw.lower() in ("1", "true", "yes", "on")
        else:
            opts[_SYNTHETIC_KEYS[key]] = _parse_int(key, raw)
    return opts


def load_dataset(spec: str) -> Dataset:
    """The data set described by ``spec`` (see :data:`SPEC_HELP`).

    Paths are checked right away (a missing file raises FileNotFoundError with the spec in the
    message); the files themselves are read when iterating (or when ``total`` is asked).
    """
    kind, sep, arg = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind == "synthetic":
        from freshrec.streams.datasets.synthetic import SyntheticDataset

        return SyntheticDataset(**_synthetic_options(arg))
    if kind in ("movielens", "ml", "mind", "mind+history"):
        if not arg.strip():
            example = "movielens-100k" if kind in ("movielens", "ml") else "mind-sample"
            raise ValueError(f"dataset {kind!r} needs a path: {kind}:PATH (e.g. {kind}:../shared/datasets/{example})")
        path = Path(arg.strip()).expanduser()
        if kind in ("movielens", "ml"):
            from freshrec.streams.datasets.movielens import MovieLens

            return MovieLens(path)
        from freshrec.streams.datasets.mind import Mind

        return Mind(path, with_history=kind == "mind+history")
    raise ValueError(f"unknown dataset {spec!r}: expected one of {SPEC_HELP}")
