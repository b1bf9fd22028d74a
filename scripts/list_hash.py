"""A hash of every list a Pipeline publishes (keys and items) over N synthetic events: a refactor of the ranking
path that claims "the same lists" must leave it unchanged. Deterministic: a fixed clock, no
time budget, hnswlib on one thread; run with PYTHONHASHSEED=0, and compare hashes made on one
machine (another CPU's BLAS kernels may round differently).

    PYTHONHASHSEED=0 python scripts/list_hash.py [--events 20000] [--behind]

To compare with an older tree, run this script with ``PYTHONPATH`` set to a root holding that
tree as ``freshrec/`` (with ``state``, ``agents``, ``streams`` copied inside it), from a
directory without a ``freshrec/`` folder (see the README's benchmark section).
"""

from __future__ import annotations

import argparse
import hashlib
import zlib

import orjson
from threadpoolctl import threadpool_limits

from freshrec.settings import Settings
from freshrec.state import ann, ranking
from freshrec.state.pipeline import Pipeline, Record
from freshrec.streams.datasets.synthetic import synthetic_events


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=20_000, help="interaction events replayed")
    ap.add_argument("--behind", action="store_true", help="the worker behind the stream (load shedding on)")
    args = ap.parse_args()
    threadpool_limits(limits=1, user_api="blas")
    ranking.ANN_THREADS = 1  # hnswlib's threads may return equal distances in either order
    init = ann.ItemIndex.__init__

    def one_thread(self, *a, **kw):
        kw["num_threads"] = 1
        init(self, *a, **kw)

    ann.ItemIndex.__init__ = one_thread
    s = Settings(recompute_budget_ms=0, recompute_budget_behind_ms=0)
    now = [1_700_000_000_000]
    p = Pipeline(s, clock=lambda: now[0], partials=False)
    offsets = {"c": 0, "i": 0}

    def record(e: dict) -> Record:
        topic, key = ("c", e["item_id"]) if e["type"].startswith("item_") else ("i", e["user_id"])
        offsets[topic] += 1
        return Record(topic, zlib.crc32(key.encode()) % 8, offsets[topic], orjson.dumps(e))

    records = [record(e) for e in synthetic_events(n_users=2000, n_items=1500, n_events=args.events, seed=3)]
    digest, lists = hashlib.sha256(), 0
    for i in range(0, len(records), 500):
        batch = records[i:i + 500]
        p.set_behind(args.behind)
        p.process_catalogue([r for r in batch if r.topic == "c"])
        p.process_interactions([r for r in batch if r.topic == "i"])
        now[0] += 250
        updates = p.collect_updates()
        lists += updates.recs
        for key, value in updates.sets:  # the keys and their items (not the documents' other fields)
            digest.update(key.encode())
            digest.update(orjson.dumps(orjson.loads(value)["items"]))
    print(f"{lists} lists, hash {digest.hexdigest()[:16]}")


if __name__ == "__main__":
    main()
