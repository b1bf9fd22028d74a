"""Prequential (test-then-train) evaluation over an event stream.

For each interaction event, in event-time order:

1. **test**, if the event is a positive engagement (click, conversion, rating) with an item the
   user has not engaged with before: every method recommends ``k`` items for the user,
   excluding the items the user already engaged with, and the rank of the event's item is
   recorded (0 = not in the list). Users with no history are tested too (cold start).
   With ``sample_every = N`` only every N-th such positive is tested;
2. **score**, if the event is an impression and click labels are known (MIND): every method
   that can score rates each shown item before anything of the slate is learned; the labels
   (clicked or not) come from the click events of the same ``request_id``;
3. **train**: every method learns the event (all events, tested or not, and catalogue events).

A positive the user had already engaged with (a repeat, e.g. the same news clicked from two
slates) is learned but not tested: it is excluded from the lists by construction, so it could
only ever count as a miss. The evaluator, not the methods, filters each returned list (items
in the exclusion set or past ``k`` are dropped and counted as ``violations``) so no method can
gain by not excluding.

Methods never share state, so running them in separate processes (``jobs``) gives the same
numbers as running them together; only the wall time changes.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from freshrec.evaluation import metrics as mx
from freshrec.evaluation.methods import POSITIVES, make_method
from freshrec.settings import Settings
from freshrec.streams.schema import CATALOGUE_TYPES

__all__ = ["MethodResult", "StreamStats", "PrequentialResult", "StreamScan", "run_prequential", "scan_stream",
           "limit_interactions", "evaluate_specs", "evaluate_parallel", "merge_results"]

EMPTY: frozenset[str] = frozenset()


@dataclass
class MethodResult:
    """Everything measured for one method (raw: ranks per test, sums; see report.summarize)."""

    name: str
    params: dict = field(default_factory=dict)
    ranks: list[int] = field(default_factory=list)  # per test, 1-based, 0 = miss
    ild_sum: float = 0.0
    ild_n: int = 0
    novelty_sum: float = 0.0
    novelty_n: int = 0
    recommended: set[str] = field(default_factory=set)
    violations: int = 0  # returned items that were excluded or past k (dropped by the evaluator)
    learn_s: float = 0.0
    recommend_s: float = 0.0
    score_s: float = 0.0
    can_score: bool = False
    probabilistic: bool = False
    click_labels: list[int] = field(default_factory=list)  # pooled over all scored impressions
    click_scores: list[float] = field(default_factory=list)
    gauc_sum: float = 0.0  # per-impression AUC, summed over impressions with both labels
    gauc_n: int = 0
    extra: dict = field(default_factory=dict)  # the method's own stats() at the end, if it has one

    @property
    def seconds(self) -> float:
        return self.learn_s + self.recommend_s + self.score_s


@dataclass
class StreamStats:
    """What the stream contained and what was tested."""

    events: int = 0
    catalogue_events: int = 0
    interactions: int = 0
    positives: int = 0
    repeats: int = 0  # positives on an item the user already had: learned, not tested
    testable: int = 0
    tests: int = 0
    cold_tests: int = 0  # tests of users with no history yet
    impressions: int = 0
    impressions_scored: int = 0
    users: int = 0
    items_seen: int = 0  # distinct items in interaction events
    first_ts: int | None = None
    last_ts: int | None = None


@dataclass
class PrequentialResult:
    k: int
    sample_every: int
    stream: StreamStats
    methods: list[MethodResult]
    test_ts: list[int] = field(default_factory=list)  # event time of each test (ms)
    test_cold: list[bool] = field(default_factory=list)
    wall_s: float = 0.0


def limit_interactions(events: Iterable[dict], limit: int | None) -> Iterator[dict]:
    """The events, stopping after ``limit`` interaction events (catalogue events don't count)."""
    if limit is None:
        yield from events
        return
    n = 0
    for event in events:
        if event["type"] not in CATALOGUE_TYPES:
            if n >= limit:
                return
            n += 1
        yield event


@dataclass
class StreamScan:
    """A first pass over the stream: sizes, and the click labels of impressions by request_id."""

    catalogue: int = 0
    interactions: int = 0
    positives: int = 0
    impressions: int = 0
    labels: dict[str, set[str]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.catalogue + self.interactions


def scan_stream(events: Iterable[dict]) -> StreamScan:
    """Count the events and collect ``request_id -> clicked items`` (clicks carrying a request_id)."""
    sc = StreamScan()
    labels = sc.labels
    for e in events:
        t = e["type"]
        if t in CATALOGUE_TYPES:
            sc.catalogue += 1
            continue
        sc.interactions += 1
        if t in POSITIVES:
            sc.positives += 1
            if t == "click" and e.get("request_id") is not None:
                labels.setdefault(e["request_id"], set()).add(e["item_id"])
        elif t == "impression":
            sc.impressions += 1
    return sc


def run_prequential(events: Iterable[dict], methods: Sequence[Any], *, k: int = 10, sample_every: int = 1,
                    labels: Mapping[str, set[str]] | None = None, progress: bool = False,
                    total: int | None = None, desc: str = "eval", position: int = 0) -> PrequentialResult:
    """Run the test-then-train loop of ``methods`` over ``events`` (see the module docstring)."""
    if k < 1 or sample_every < 1:
        raise ValueError("k and sample_every must be >= 1")
    from tqdm import tqdm

    t_start = time.perf_counter()
    clock = time.perf_counter
    results = [MethodResult(name=m.name, params=dict(getattr(m, "params", {}) or {})) for m in methods]
    scorers = []
    for m, r in zip(methods, results):
        if callable(getattr(m, "score_one", None)):
            r.can_score = True
            r.probabilistic = bool(getattr(m, "probabilistic", False))
            scorers.append((m, r))
    pairs = list(zip(methods, results))
    st = StreamStats()
    res = PrequentialResult(k=k, sample_every=sample_every, stream=st, methods=results)

    history: dict[str, set[str]] = {}  # user -> items engaged (the exclusion set)
    counts: dict[str, int] = {}  # item -> positive engagements so far (novelty)
    items_seen: set[str] = set()
    users: set[str] = set()
    cat_bits: dict[str, int] = {}  # category label -> bit
    categories: dict[str, int] = {}  # item -> bit mask of its categories (ILD)
    total_pos = 0

    bar = tqdm(total=total, desc=desc, unit="ev", file=sys.stderr, disable=not progress, position=position,
               mininterval=0.5, dynamic_ncols=True, leave=True)
    try:
        for event in events:
            st.events += 1
            bar.update(1)
            etype = event["type"]
            if etype in CATALOGUE_TYPES:
                st.catalogue_events += 1
                if etype == "item_upsert":
                    labels_ = [event["category"]] if event.get("category") else []
                    labels_ += event.get("tags") or []
                    mask = 0
                    for lab in labels_:
                        bit = cat_bits.get(lab)
                        if bit is None:
                            bit = cat_bits[lab] = 1 << len(cat_bits)
                        mask |= bit
                    if mask:
                        categories[event["item_id"]] = mask
                    else:
                        categories.pop(event["item_id"], None)
                for m, r in pairs:
                    t0 = clock()
                    m.learn_one(event)
                    r.learn_s += clock() - t0
                continue

            st.interactions += 1
            ts = event["ts"]
            if st.first_ts is None:
                st.first_ts = ts
            st.last_ts = ts if st.last_ts is None else max(st.last_ts, ts)
            user = event["user_id"]
            users.add(user)

            if etype in POSITIVES:
                st.positives += 1
                item = event["item_id"]
                seen = history.get(user)
                if seen is not None and item in seen:
                    st.repeats += 1
                else:
                    st.testable += 1
                    if (st.testable - 1) % sample_every == 0:
                        exclude = seen if seen is not None else EMPTY
                        _test(pairs, user, item, k, exclude, counts, total_pos, len(items_seen), categories)
                        st.tests += 1
                        res.test_ts.append(ts)
                        cold = not seen
                        res.test_cold.append(cold)
                        st.cold_tests += cold
            elif etype == "impression":
                st.impressions += 1
                if labels is not None and scorers:
                    clicked = labels.get(event["request_id"], EMPTY)
                    _score(scorers, user, event["item_ids"], clicked)
                    st.impressions_scored += 1

            for m, r in pairs:  # train: every method learns every event
                t0 = clock()
                m.learn_one(event)
                r.learn_s += clock() - t0

            if etype in POSITIVES:
                item = event["item_id"]
                history.setdefault(user, set()).add(item)
                counts[item] = counts.get(item, 0) + 1
                total_pos += 1
                items_seen.add(item)
            elif etype == "impression":
                items_seen.update(event["item_ids"])
            elif etype == "user_delete":
                history.pop(user, None)
            elif "item_id" in event:
                items_seen.add(event["item_id"])

            if progress and st.tests and st.interactions % 5000 == 0:
                bar.set_postfix_str(" ".join(
                    f"{r.name}={sum(1 for x in r.ranks if x) / len(r.ranks):.3f}" for r in results), refresh=False)
    finally:
        bar.close()
    for m, r in pairs:
        if callable(getattr(m, "stats", None)):
            r.extra = dict(m.stats())
    st.users = len(users)
    st.items_seen = len(items_seen)
    res.wall_s = time.perf_counter() - t_start
    return res


def _test(pairs: list, user: str, item: str, k: int, exclude: frozenset[str] | set[str],
          counts: dict[str, int], total_pos: int, n_items: int, categories: dict[str, int]) -> None:
    clock = time.perf_counter
    for m, r in pairs:
        t0 = clock()
        recs = m.recommend_one(user, k, exclude)
        r.recommend_s += clock() - t0
        clean = [i for i in recs if i not in exclude]
        if len(clean) > k:
            clean = clean[:k]
        if len(clean) != len(recs):
            r.violations += len(recs) - len(clean)
        rank = 0
        for pos, rec in enumerate(clean, 1):
            if rec == item:
                rank = pos
                break
        r.ranks.append(rank)
        if clean:
            r.recommended.update(clean)
            nov = mx.novelty(clean, counts, total_pos, n_items)
            if nov is not None:
                r.novelty_sum += nov
                r.novelty_n += 1
            ild = mx.intra_list_diversity(clean, categories)
            if ild is not None:
                r.ild_sum += ild
                r.ild_n += 1


def _score(scorers: list, user: str, items: list[str], clicked: frozenset[str] | set[str]) -> None:
    y = [1 if i in clicked else 0 for i in items]
    both = 0 < sum(y) < len(y)
    clock = time.perf_counter
    for m, r in scorers:
        t0 = clock()
        s = m.score_one(user, items)
        r.score_s += clock() - t0
        if len(s) != len(items):
            raise RuntimeError(f"{r.name}.score_one returned {len(s)} scores for {len(items)} items")
        r.click_labels.extend(y)
        r.click_scores.extend(float(v) for v in s)
        if both:
            a = mx.auc(y, s)
            if a is not None:
                r.gauc_sum += a
                r.gauc_n += 1


# ---------------------------------------------------------------------------------------- drivers

def evaluate_specs(dataset: str | Any, specs: Sequence[str], *, k: int = 10, sample_every: int = 1,
                   limit: int | None = None, progress: bool = False, position: int = 0,
                   settings: Settings | None = None) -> PrequentialResult:
    """Load ``dataset`` (a spec or a loaded Dataset), build the methods and run the loop here."""
    from freshrec.streams.datasets import load_dataset

    data = load_dataset(dataset) if isinstance(dataset, str) else dataset
    sc = scan_stream(limit_interactions(data, limit))
    methods = [make_method(s, settings) for s in specs]
    desc = "eval" if len(methods) > 2 else "eval " + "+".join(m.name for m in methods)
    return run_prequential(limit_interactions(data, limit), methods, k=k, sample_every=sample_every,
                           labels=sc.labels if sc.impressions else None, progress=progress, total=sc.total,
                           desc=desc, position=position)


def _evaluate_job(args: tuple) -> PrequentialResult:
    dataset, specs, kwargs = args
    return evaluate_specs(dataset, specs, **kwargs)


def merge_results(parts: Sequence[PrequentialResult], order: Sequence[str] | None = None) -> PrequentialResult:
    """Combine runs over the same stream with different methods into one result."""
    if not parts:
        raise ValueError("nothing to merge")
    first = parts[0]
    for p in parts[1:]:
        if p.test_ts != first.test_ts or p.stream.tests != first.stream.tests:
            raise RuntimeError("runs to merge did not test the same events")
    methods = [m for p in parts for m in p.methods]
    if order is not None:
        rank = {name: i for i, name in enumerate(order)}
        methods.sort(key=lambda m: rank.get(m.name, math.inf))
    return PrequentialResult(k=first.k, sample_every=first.sample_every, stream=first.stream, methods=methods,
                             test_ts=first.test_ts, test_cold=first.test_cold,
                             wall_s=max(p.wall_s for p in parts))


def evaluate_parallel(dataset: str, specs: Sequence[str], jobs: int, **kwargs: Any) -> PrequentialResult:
    """:func:`evaluate_specs` with the methods spread over ``jobs`` processes (same numbers).

    Methods are assigned greedily by a rough cost rank so the slow ones (rtrec, freshrec) land
    in different processes.
    """
    from freshrec.evaluation.methods import method_label

    jobs = max(1, min(jobs, len(specs)))
    if jobs == 1:
        return evaluate_specs(dataset, specs, **kwargs)
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    cost = {"rtrec": 10, "freshrec": 4, "funkmf": 3, "covis20": 2, "popularity": 1, "item-ctr": 1}
    buckets: list[list[str]] = [[] for _ in range(jobs)]
    load = [0] * jobs
    for spec in sorted(specs, key=lambda s: -cost.get(s.partition(":")[0].strip().lower(), 2)):
        j = load.index(min(load))
        buckets[j].append(spec)
        load[j] += cost.get(spec.partition(":")[0].strip().lower(), 2)
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures = [pool.submit(_evaluate_job, (dataset, b, {**kwargs, "position": i}))
                   for i, b in enumerate(buckets)]
        parts = [f.result() for f in futures]
    return merge_results(parts, order=[method_label(s) for s in specs])
