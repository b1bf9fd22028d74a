"""The worker's per-batch work in process, on the benchmark's synthetic stream: WARM interactions
to build up state, then MEASURE interactions timed (or counted by callgrind, see count_instructions.sh).

    python scripts/ingest_probe.py [--warm 50000] [--measure 10000] [--partials] [--no-freeze] [--lists N] [--live N]

Batches of ``FRESHREC_BATCH_MAX`` messages in stream order (catalogue changes applied first, as
the stream engine does), on 8 partitions keyed by user and item, the worker's garbage
collector settings (and its ``gc.freeze()`` after each batch unless ``--no-freeze``), a flush
whenever one is due with a clock that moves 250 ms a batch, and the worker "behind" (the
benchmark's backlog phase). ``--partials`` keeps per-partition item rows (the Faust engine's
layout) instead of the stream engine's merged views. ``--lists N`` measures N lists instead
(after the warm-up: the first N users' lists, in batches as the worker makes them). ``--live N``
measures N interactions caught up with the stream instead, as a worker sees them at 5k events/s:
batches of 100 with a clock that moves 20 ms a batch, every pending user listed at each flush
(no time budget), every slate learned; it prints the CPU of learning per event and of flushes per
list. Lists cost about twice as much there as in ``--lists``: the active users are the heavy
ones, and the co-visitation lists of the items they engaged with change every second.
"""

from __future__ import annotations

import argparse
import gc
import os
import dataclasses
import time
import zlib

import orjson
from threadpoolctl import threadpool_limits

from freshrec.settings import load_settings
from freshrec.state.pipeline import PUBLISH_CHUNK, Pipeline, Record, publish_many
from freshrec.streams.datasets.synthetic import synthetic_events


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--warm", type=int, default=50_000, help="interactions applied before the measured part (with the catalogue changes among them)")
    ap.add_argument("--measure", type=int, default=10_000, help="interactions in the measured part")
    ap.add_argument("--partials", action="store_true", help="per-partition item rows (the Faust engine's layout)")
    ap.add_argument("--no-freeze", action="store_true", help="no gc.freeze() after each batch")
    ap.add_argument("--lists", type=int, default=0, metavar="N",
                    help="measure N published lists after the warm-up instead of the interactions")
    ap.add_argument("--handshake", metavar="FILE",
                    help="before the measured part, write the pid to FILE and wait for FILE.ack "
                         "(count_instructions.sh turns callgrind's instrumentation on in between)")
    ap.add_argument("--live", type=int, default=0, metavar="N",
                    help="measure N interactions caught up with the stream (see above) instead")
    args = ap.parse_args()

    threadpool_limits(limits=1, user_api="blas")  # as every freshrec command (freshrec/cli.py)
    s = load_settings()
    if args.live:
        s = dataclasses.replace(s, recompute_budget_ms=0, recompute_budget_behind_ms=0)
        args.measure = args.live
    events = list(synthetic_events(n_users=20_000, n_items=10_000, n_events=args.warm + args.measure,
                                   seed=1, realtime=True))
    now = [1_800_000_000_000]
    p = Pipeline(s, clock=lambda: now[0], partials=args.partials)
    offsets = {"c": 0, "i": 0}

    def record(e: dict) -> Record:
        topic, key = ("c", e["item_id"]) if e["type"].startswith("item_") else ("i", e["user_id"])
        offsets[topic] += 1
        return Record(topic, zlib.crc32(key.encode()) % 8, offsets[topic], orjson.dumps(e))

    records = [record(e) for e in events]
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)  # as StreamWorker.run

    def run(lo: int, hi: int, size: int = s.batch_max, tick_ms: int = 250,
            behind: bool = True) -> tuple[int, float, float]:
        """Batches as the stream engine makes them: catalogue first, then the interactions.
        Returns the lists made and the CPU seconds of applying the batches and of the flushes."""
        lists, learn, flush = 0, 0.0, 0.0
        for i in range(lo, hi, size):
            batch = records[i:min(i + size, hi)]
            t0 = time.process_time()
            p.set_behind(behind)
            p.process_catalogue([r for r in batch if r.topic == "c"])
            p.process_interactions([r for r in batch if r.topic == "i"])
            if not args.no_freeze:
                gc.freeze()
            now[0] += tick_ms
            t1 = time.process_time()
            if p.due():
                lists += p.collect_updates().recs
            learn, flush = learn + t1 - t0, flush + time.process_time() - t1
        return lists, learn, flush

    inter = [j for j, r in enumerate(records) if r.topic == "i"]
    warm = inter[args.warm] if args.warm < len(inter) else len(records)  # the first measured message
    run(0, warm)
    if args.handshake:
        with open(args.handshake, "w") as f:
            f.write(str(os.getpid()))
        while not os.path.exists(args.handshake + ".ack"):
            time.sleep(0.2)
    if args.lists:
        users = list(p.features.users)[: args.lists]
        rows = [(u, p.features.user(u)) for u in users]
        t0 = time.process_time()
        for start in range(0, len(rows), PUBLISH_CHUNK):
            publish_many(p.recommender, rows[start:start + PUBLISH_CHUNK], s.recs_k)
        cpu = time.process_time() - t0
        print(f"measured {len(rows)} lists: {cpu:.2f} CPU s, {1000 * cpu / max(len(rows), 1):.3f} ms per list")
        return
    if args.live:
        p.set_behind(False)
        p.collect_updates()  # the warm-up's waiting lists; not forced, as the worker never is
        # once running: a forced refresh drops every cached co-visitation list, and the measured
        # seconds paid for remaking them (43b0639: 0.73 ms a list forced, 0.71 not; session 16)
        lists, learn, flush = run(warm, len(records), size=100, tick_ms=20, behind=False)
        n = len(inter) - args.warm
        print(f"live: {n} interactions, learning {1e6 * learn / max(n, 1):.1f} us CPU each; "
              f"flushes {flush:.2f} CPU s for {lists} lists, {1000 * flush / max(lists, 1):.3f} ms per list")
        return
    t0 = time.process_time()
    lists, _, _ = run(warm, len(records))
    cpu = time.process_time() - t0
    n = len(inter) - args.warm
    print(f"measured {n} interactions, {len(records) - warm - n} catalogue changes, {lists} lists: "
          f"{cpu:.2f} CPU s, {n / max(cpu, 1e-9):,.0f} interactions per CPU second")


if __name__ == "__main__":
    main()
