"""``freshrec bench``: whole-pipeline throughput and freshness beside Kafka's raw consume rate.

All figures come from one run on the same topic, so ratios are meaningful on a noisy machine:

1. preload N synthetic events (stamped with the wall clock) into a fresh interactions topic;
2. raw baseline: confluent-kafka batch consume + orjson decode of those N events, and the same
   through a bare Faust agent (the ceiling Faust's per-message machinery sets for a worker);
3. pipeline: a real ``freshrec worker`` process consumes the same N events (features, dedupe,
   changelog writes, coalesced recompute, Redis publish); rate = events / time from its first
   committed progress until its consumer group has no lag;
4. freshness: events stamped with the wall clock are produced at a fixed rate; for every user
   list published during that phase, ``generated_at - event_ts`` (what a frontend would see),
   and, of the users active in the phase, the share whose list reflects their newest event once
   the worker caught up (with ``generated_at`` minus that event's ts), and how long after the
   phase 99% of them do: an overloaded worker makes fresh lists for a few users while the others
   keep stale ones, which only the share shows; and the cores each process (worker, producer,
   local Kafka and Redis) used while the phase was produced, beside the machine's idle ones.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import click
import orjson

from freshrec.settings import Settings, load_settings, state_dir


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def raw_consume_rate(settings: Settings, topic: str, expected: int, timeout_s: float = 300.0) -> float:
    """Events/s of confluent-kafka batch consume + orjson decode of ``expected`` messages."""
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": settings.kafka_brokers, "group.id": f"raw-{time.time_ns()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "fetch.max.bytes": 52428800, "queued.min.messages": 200000})
    consumer.subscribe([topic])
    loads = orjson.loads
    n = 0
    started = None
    deadline = time.monotonic() + timeout_s
    try:
        while n < expected and time.monotonic() < deadline:
            batch = consumer.consume(num_messages=10000, timeout=1.0)
            if not batch:
                continue
            if started is None:
                started = time.perf_counter()
            for msg in batch:
                if msg.error() is None:
                    loads(msg.value())
                    n += 1
        elapsed = time.perf_counter() - (started or time.perf_counter())
    finally:
        consumer.close()
    if n < expected:
        raise click.ClickException(f"raw consumer read only {n}/{expected} events")
    return n / elapsed if elapsed > 0 else float("inf")


def faust_consume_rate(settings: Settings, topic: str, expected: int, timeout_s: float = 600.0) -> float:
    """Events/s of a bare Faust agent (take_events + orjson decode) on ``topic``."""
    import sys

    env = {**__import__("os").environ, **settings.to_env()}
    out = subprocess.run([sys.executable, "-m", "freshrec.bench_faust", topic, str(expected)], env=env,
                         capture_output=True, text=True, timeout=timeout_s)
    import re

    # Faust's worker redirects print() into its logger, so look in both streams.
    found = re.search(r'\{"events_per_s":\s*([0-9.eE+-]+)\}', out.stdout + out.stderr)
    if found:
        return float(found.group(1))
    raise click.ClickException(f"bare Faust consumer failed:\n{out.stderr[-2000:]}")


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds a process (all its threads) has used so far; None where Linux's
    ``/proc`` is not there. Beside a rate it tells "the worker was slow" from "the worker did not
    get the CPU" on a shared machine."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def machine_idle_s() -> float | None:
    """Idle CPU seconds of the whole machine so far, summed over its cores (``/proc/stat``: idle +
    iowait); None where Linux's ``/proc`` is not there."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class CpuSplit:
    """Where a machine's CPU went over an interval: the cores each named process used on average
    (1.0: one core all the time) and the cores left idle. A worker that is the bottleneck at
    ~1.0 beside an idle core says "one process's worth of capacity", which no rate alone says."""

    def __init__(self, pids: Mapping[str, int | None]) -> None:
        self.pids = {name: pid for name, pid in pids.items() if pid}
        self.t0 = time.monotonic()
        self.start = self._read()

    def _read(self) -> dict[str, float | None]:
        out = {name: process_cpu_s(pid) for name, pid in self.pids.items()}
        out["idle"] = machine_idle_s()
        return out

    def cores(self) -> dict[str, float]:
        """Cores used since the start, per name (and ``idle``); names that could not be read are left out."""
        end, dt = self._read(), max(time.monotonic() - self.t0, 1e-9)
        return {name: round((end[name] - self.start[name]) / dt, 2) for name in end
                if end[name] is not None and self.start[name] is not None}


def pipeline_rate(settings: Settings, expected: int, proc: subprocess.Popen,
                  timeout_s: float = 900.0) -> tuple[float, float, float | None]:
    """Events/s of the worker over the preloaded backlog: (rate, seconds, the worker's CPU
    seconds in them or None)."""
    from freshrec.streams.lag import total_lag

    topics = [settings.interactions_topic]
    t_first = lag_first = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise click.ClickException(f"worker exited with code {proc.returncode}")
        try:
            lag = total_lag(settings.kafka_brokers, settings.app_id, topics)
        except Exception:  # noqa: BLE001 - group not there yet
            lag = expected
        now = time.monotonic()
        if t_first is None and lag < expected:
            t_first, lag_first, cpu_first = now, lag, process_cpu_s(proc.pid)
        if lag == 0 and t_first is not None:
            # Rate over the events consumed between the first observed commit and the last one
            # (commits land about once per second, so start-up time is left out).
            cpu_last = process_cpu_s(proc.pid)
            cpu = cpu_last - cpu_first if cpu_first is not None and cpu_last is not None else None
            return lag_first / max(now - t_first, 1e-9), now - t_first, cpu
        time.sleep(0.1)
    raise click.ClickException("worker did not catch up in time")


def reflected_at(doc: Mapping, ranked: bool = False) -> int | None:
    """When a list reflecting ``doc``'s ``event_ts`` was first published (a quick list's time,
    which the ranked list replacing it keeps), or with ``ranked`` when a ranked one was (None:
    ``doc`` is still a quick list)."""
    if ranked:
        return None if doc.get("tier") == "quick" else doc["generated_at"]
    return doc.get("reflected_at", doc["generated_at"])


def lists_since(settings: Settings, since_ms: int) -> list[dict]:
    """Every user list (decoded) published after ``since_ms`` for an event after it."""
    import redis

    client = redis.Redis.from_url(settings.redis_url)
    out = []
    keys = list(client.scan_iter(match=f"{settings.redis_prefix}:recs:*", count=2000))
    for i in range(0, len(keys), 1000):
        for raw in client.mget(keys[i:i + 1000]):
            if raw is None:
                continue
            doc = orjson.loads(raw)
            if doc["generated_at"] >= since_ms and doc["event_ts"] >= since_ms:
                out.append(doc)
    return out


def freshness_samples(docs: Iterable[Mapping], ranked: bool = False) -> list[int]:
    """How long after its ``event_ts`` each list of ``docs`` first reflected it
    (:func:`reflected_at`; ``ranked``: ranked lists only)."""
    return [at - doc["event_ts"] for doc in docs if (at := reflected_at(doc, ranked)) is not None]


ALL_LISTS_SHARE = 0.99  # "every active user has a fresh list": this share of them
ALL_LISTS_LIMIT_S = 90.0  # measured from the end of a phase; longer is reported as not reached


def _reflecting(newest_ts: Mapping[str, int], lists: Mapping[str, dict | None],
                ranked: bool = False) -> Iterator[tuple[int, int]]:
    """``(at, at - newest ts)`` of each user whose list reflects his newest event, ``at`` being
    when a list first reflected it (:func:`reflected_at`; ``ranked``: a ranked list)."""
    for user_id, ts in newest_ts.items():
        doc = lists.get(user_id)
        if doc is not None and doc["event_ts"] >= ts:
            at = reflected_at(doc, ranked)
            if at is not None:
                yield at, at - ts


def newest_event_freshness(newest_ts: Mapping[str, int], lists: Mapping[str, dict | None],
                           ranked: bool = False) -> dict:
    """Of the users active in a phase (``newest_ts``: their newest event's ts), how many have a
    list (``lists``: their current one, decoded, or None) that reflects that event, and how long
    after it those lists were made (``generated_at - newest ts``). The per-list figures alone
    flatter an overloaded worker: lists made early in the phase, or for a few users only, are
    fresh, while most active users still show a list that misses their latest events. A quick
    list counts (it reflects the event, see ``state/quicklists.py``) unless ``ranked``."""
    delays = [delay for _, delay in _reflecting(newest_ts, lists, ranked)]
    n = len(newest_ts)
    return {"active_users": n, "reflecting_newest": len(delays),
            "share": round(len(delays) / n, 4) if n else None,
            "p50_ms": _percentile(delays, 0.5), "p99_ms": _percentile(delays, 0.99)}


def made_during_and_after(newest_ts: Mapping[str, int], lists: Mapping[str, dict | None], ended_ms: int,
                          ranked: bool = False) -> dict:
    """Of the users' lists that reflect their newest event of a phase (see
    :func:`newest_event_freshness`), those made while the phase was still being produced
    (``generated_at <= ended_ms``) and those made after it, each with p50/p99 of how long after
    the event they were made. A worker short of capacity keeps the first fresh and serves the
    rest once the stream quietens: the per-list percentiles mix the two in proportions that
    depend on when the lists are read, these do not."""
    during: list[int] = []
    after: list[int] = []
    for at, delay in _reflecting(newest_ts, lists, ranked):
        (during if at <= ended_ms else after).append(delay)
    return {name: {"lists": len(d), "p50_ms": _percentile(d, 0.5), "p99_ms": _percentile(d, 0.99)}
            for name, d in (("during", during), ("after", after))}


def cores_line(cores: Mapping[str, float]) -> str:
    """:meth:`CpuSplit.cores` as one line of the report."""
    used = ", ".join(f"{name} {v:.2f}" for name, v in cores.items() if name != "idle")
    idle = f"; the machine left {cores['idle']:.2f} of {os.cpu_count()} idle" if "idle" in cores else ""
    return f"CPU while the phase was produced, in cores: {used}{idle}"


def current_lists(settings: Settings, user_ids: list[str]) -> dict[str, dict | None]:
    """The users' current lists in Redis (decoded; None where a user has none)."""
    import redis

    from freshrec.state.publisher import RedisKeys

    client = redis.Redis.from_url(settings.redis_url)
    keys = RedisKeys(settings.redis_prefix)
    out: dict[str, dict | None] = {}
    for i in range(0, len(user_ids), 1000):
        chunk = user_ids[i:i + 1000]
        for user_id, raw in zip(chunk, client.mget([keys.recs(u) for u in chunk])):
            out[user_id] = None if raw is None else orjson.loads(raw)
    return out


def _measure_freshness(settings: Settings, rate: float, seconds: float, users: int, items: int,
                       proc: subprocess.Popen, seed: int, service_pids: Mapping[str, int | None]) -> dict:
    from freshrec.cli import wait_caught_up
    from freshrec.streams.datasets.synthetic import synthetic_events
    from freshrec.streams.producer import EventProducer
    from freshrec.streams.replay import replay

    since = int(time.time() * 1000)
    n = int(rate * seconds)
    newest: dict[str, int] = {}  # user -> ts of their newest event of the phase

    def events() -> Iterator[dict]:
        for e in synthetic_events(n_users=users, n_items=items, n_events=n, seed=seed, realtime=True):
            if e["type"] not in ("item_upsert", "item_delete"):
                newest[e["user_id"]] = max(e["ts"], newest.get(e["user_id"], 0))
                yield e

    cpu = CpuSplit({"worker": proc.pid, "producer (this process)": os.getpid(), **service_pids})
    with EventProducer(settings) as producer:
        summary = replay(events(), producer, rate=rate, progress=False)
    cores = cpu.cores()
    ended = time.monotonic()
    ended_ms = int(time.time() * 1000)
    wait_caught_up(settings, quiet=True, proc=proc)
    time.sleep((settings.recompute_interval_ms + 500) / 1000.0)
    out = {"target_rate": rate, "achieved_produce_rate": round(summary.events_per_s, 1), "cores_during_phase": cores}
    users = list(newest)
    lists = current_lists(settings, users)
    published = lists_since(settings, since)
    for tier, ranked in (("", False), ("ranked_", True)):  # any list reflecting the event; a ranked one
        samples = freshness_samples(published, ranked)
        out |= {f"{tier}lists": len(samples), f"{tier}p50_ms": _percentile(samples, 0.5),
                f"{tier}p99_ms": _percentile(samples, 0.99),
                f"{tier}mean_ms": round(statistics.fmean(samples), 1) if samples else None,
                f"{tier}newest_event": newest_event_freshness(newest, lists, ranked)}
    # then how long until (nearly) every active user's list reflects their newest event, and a ranked one
    after: dict[bool, float | None] = {False: None, True: None}
    while time.monotonic() - ended < ALL_LISTS_LIMIT_S:
        for ranked in (False, True):
            if after[ranked] is None and (newest_event_freshness(newest, lists, ranked)["share"] or 0) >= ALL_LISTS_SHARE:
                after[ranked] = round(time.monotonic() - ended, 1)
        if after[True] is not None:
            break
        time.sleep(1.0)
        lists = current_lists(settings, users)
    return out | {"all_lists_after_s": after[False], "ranked_all_lists_after_s": after[True],
                  "newest_event_final": made_during_and_after(newest, lists, ended_ms),
                  "ranked_newest_event_final": made_during_and_after(newest, lists, ended_ms, ranked=True)}


@click.command()
@click.option("--events", default=200_000, show_default=True, help="Backlog size for the throughput phase.")
@click.option("--users", default=20_000, show_default=True)
@click.option("--items", default=10_000, show_default=True)
@click.option("--rate", "rates", multiple=True, type=float, default=(100.0, 5000.0), show_default=True,
              help="Produce rates (events/s) of the freshness phases; repeat the option for several.")
@click.option("--seconds", default=15.0, show_default=True, help="Length of each freshness phase.")
@click.option("--engine", type=click.Choice(["stream", "faust"]), default="stream", show_default=True,
              help="Worker engine to measure.")
@click.option("--model", type=click.Choice(["learning", "covis"]), default="learning", show_default=True,
              help="learning: online MF + HNSW + content index + click model; covis: counting baseline.")
@click.option("--faust-baseline/--no-faust-baseline", default=True, show_default=True,
              help="Also measure a bare Faust agent on the same topic.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Also write the figures as JSON here.")
def bench(events: int, users: int, items: int, rates: tuple[float, ...], seconds: float, engine: str, model: str,
          faust_baseline: bool, out: Path | None) -> None:
    """Measure events/s and freshness p50/p99 of the whole pipeline against raw Kafka consume.

    Uses the local services (`freshrec dev up`, started if needed) unless FRESHREC_KAFKA_BROKERS
    and FRESHREC_REDIS_URL point elsewhere; topics, consumer group and Redis keys are fresh per run.
    """
    import os

    from freshrec.cli import start_worker_process, wait_caught_up
    from freshrec.streams.datasets.synthetic import synthetic_events
    from freshrec.streams.producer import EventProducer
    from freshrec.streams.replay import replay
    from freshrec.streams.topics import ensure_topics

    service_pids: dict[str, int | None] = {}  # the local services' processes, for the CPU split
    if not os.environ.get("FRESHREC_KAFKA_BROKERS"):
        from freshrec.localinfra.stack import DevStack

        up = DevStack().up()
        service_pids = {"Kafka broker": up.get("kafka_pid"), "Redis": up.get("redis_pid")}
    run = time.strftime("%Y%m%d%H%M%S")
    base = load_settings()
    if engine == "faust" and model != "covis":
        raise click.BadParameter("the faust engine runs the covis model only", param_hint="--model")
    settings = base.replace(topic_prefix=f"bench-{run}", app_id=f"bench-{run}", redis_prefix=f"bench-{run}",
                            web_port=0, engine=engine, model=model)
    ensure_topics(settings)
    click.echo(f"preloading {events:,} synthetic events ({users:,} users, {items:,} items) ...", err=True)
    # stamped with the wall clock as they are produced, like the freshness phases: a worker
    # catching up on recent events, not a replay of 2023 followed by a jump of years in event
    # time at the first freshness phase (which made every pending impression come due at once)
    stream = synthetic_events(n_users=users, n_items=items, n_events=events, seed=1, realtime=True)
    with EventProducer(settings) as producer:
        summary = replay(stream, producer, progress=True)
    n_interactions = sum(v for k, v in summary.sent_by_type.items() if k not in ("item_upsert", "item_delete"))

    click.echo("raw baseline: confluent-kafka batch consume + orjson decode ...", err=True)
    raw_rate = raw_consume_rate(settings, settings.interactions_topic, n_interactions)
    click.echo("Faust ceiling: a bare Faust agent that only decodes ...", err=True)
    faust_rate = faust_consume_rate(settings, settings.interactions_topic, n_interactions) if faust_baseline else None

    log_path = state_dir() / "bench" / f"worker-{run}.log"
    click.echo(f"pipeline: starting a worker (log {log_path}) on the backlog ...", err=True)
    proc = start_worker_process(settings, log_path)
    try:
        rate, secs, cpu_s = pipeline_rate(settings, n_interactions, proc)
        wait_caught_up(settings, quiet=True, proc=proc)
        fresh = [_measure_freshness(settings, r, seconds, users, items, proc, seed=2 + i, service_pids=service_pids)
                 for i, r in enumerate(rates)]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    result = {"engine": engine, "model": model, "events": n_interactions,
              "raw_consume_decode_events_per_s": round(raw_rate),
              "bare_faust_consume_decode_events_per_s": round(faust_rate) if faust_rate else None,
              "pipeline_events_per_s": round(rate), "pipeline_seconds": round(secs, 2),
              "pipeline_worker_cpu_s": round(cpu_s, 2) if cpu_s is not None else None,
              "ratio_pipeline_to_raw": round(rate / raw_rate, 4), "freshness": fresh}
    click.echo("")
    click.echo(f"events in backlog:                      {n_interactions:,}")
    click.echo(f"raw consume + decode (confluent-kafka): {raw_rate:>10,.0f} events/s")
    if faust_rate:
        click.echo(f"bare Faust agent, decode only:          {faust_rate:>10,.0f} events/s   "
                   f"({100 * faust_rate / raw_rate:.1f}% of raw)")
    click.echo(f"whole pipeline ({engine} engine, {model}): {rate:>10,.0f} events/s   "
               f"({100 * rate / raw_rate:.1f}% of raw)")
    if cpu_s:
        click.echo(f"  the worker's CPU on the backlog: {cpu_s:.1f} s in {secs:.1f} s ({100 * cpu_s / secs:.0f}% of a core): "
                   f"{rate * secs / cpu_s:,.0f} events per CPU second")
    for f in fresh:
        click.echo(f"freshness at {f['target_rate']:>6,.0f} ev/s (produced {f['achieved_produce_rate']:,.0f}/s), "
                   f"first list reflecting an event (ranked or quick): p50 {f['p50_ms']} ms  p99 {f['p99_ms']} ms  "
                   f"over {f['lists']:,} lists; ranked lists: p50 {f['ranked_p50_ms']} ms  p99 {f['ranked_p99_ms']} ms  "
                   f"over {f['ranked_lists']:,}")
        for tier, what in (("", "a list (ranked or quick)"), ("ranked_", "a ranked list")):
            ne = f[f"{tier}newest_event"]
            click.echo(f"  users whose newest event {what} reflects: {ne['reflecting_newest']:,} of "
                       f"{ne['active_users']:,} active ({100 * (ne['share'] or 0):.1f}%), made p50 {ne['p50_ms']} ms  "
                       f"p99 {ne['p99_ms']} ms after it")
            done = f[f"{tier}all_lists_after_s"]
            after = f"{done} s" if done is not None else f"not within {ALL_LISTS_LIMIT_S:.0f} s"
            d, a = f[f"{tier}newest_event_final"]["during"], f[f"{tier}newest_event_final"]["after"]
            click.echo(f"    {100 * ALL_LISTS_SHARE:.0f}% of them {after} after the phase ended; then, made during "
                       f"the phase: {d['lists']:,} (p50 {d['p50_ms']} ms  p99 {d['p99_ms']} ms after the event); "
                       f"after it: {a['lists']:,} (p50 {a['p50_ms']} ms  p99 {a['p99_ms']} ms)")
        click.echo(f"  {cores_line(f['cores_during_phase'])}")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
