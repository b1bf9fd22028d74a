"""Bare Faust consume rate, for ``freshrec bench``: an agent that only decodes (no state, no Redis).

Run as ``python -m freshrec.bench_faust TOPIC N``; prints one JSON line ``{"events_per_s": ...}``
once N events were consumed. It is the ceiling Faust's stream machinery sets for a worker, beside
the raw confluent-kafka rate.
"""

from __future__ import annotations

import os
import sys
import time

import faust
import orjson

from freshrec.settings import load_settings


def main() -> None:
    topic_name, expected = sys.argv[1], int(sys.argv[2])
    settings = load_settings()
    app = faust.App(f"bare-{time.time_ns()}", broker=f"kafka://{settings.kafka_brokers}", store="memory://",
                    web_enabled=False, autodiscover=False, consumer_auto_offset_reset="earliest",
                    datadir=f"/tmp/freshrec-bench-faust-{os.getpid()}")
    topic = app.topic(topic_name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    seen = {"n": 0, "t0": 0.0}

    @app.agent(topic)
    async def bare(stream: faust.StreamT) -> None:
        async for events in stream.take_events(settings.batch_max, within=settings.batch_within_ms / 1000):
            if not seen["n"]:
                seen["t0"] = time.perf_counter()
            for event in events:
                orjson.loads(event.message.value)
            seen["n"] += len(events)
            if seen["n"] >= expected:
                rate = seen["n"] / (time.perf_counter() - seen["t0"])
                print(orjson.dumps({"events_per_s": rate}).decode(), flush=True)
                os._exit(0)

    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    app.main()


if __name__ == "__main__":
    main()
