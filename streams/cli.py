"""``freshrec produce`` and ``freshrec replay``: put events into Kafka from stdin or a data set."""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import BinaryIO

import click
import orjson

from freshrec.settings import Settings, load_settings

SHOW_INVALID = 10  # invalid lines reported one by one on stderr before going quiet


def _ensure_topics(settings: Settings) -> None:
    from freshrec.streams.topics import ensure_topics

    try:
        created = ensure_topics(settings)
    except Exception as exc:  # unreachable broker, partition mismatch: say it plainly
        raise click.ClickException(str(exc)) from exc
    if created:
        click.echo(f"created topics: {', '.join(created)}", err=True)


def _raw_key(line: bytes) -> bytes | None:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    user = obj.get("user_id") if isinstance(obj, dict) else None
    return user.encode() if isinstance(user, str) and user else None


@click.command()
@click.option("--raw", is_flag=True,
              help="Send every line verbatim to the interactions topic (key = user_id when the line "
                   "parses), so the worker does the validation and dead-lettering.")
@click.option("--input", "-i", "input_file", type=click.File("rb"), default="-", show_default=True,
              help="Read JSON lines from this file instead of stdin.")
def produce(raw: bool, input_file: BinaryIO) -> None:
    """Send JSON-lines events from stdin to Kafka (one event per line).

    Each valid event goes to its topic (interactions, keyed by user_id, or catalogue, keyed by
    item_id). Invalid lines go to the dead-letter topic unchanged, with the reason in headers
    (source `stdin`, partition -1, offset = line number) and are listed on stderr. Empty lines
    are skipped. Every event needs `type`, `event_id` and `ts` (epoch ms); `v` defaults to 1.

    \b
    Examples:
      echo '{"type":"click","event_id":"e1","ts":1700000000000,"user_id":"u1","item_id":"i9"}' \\
          | freshrec produce
      freshrec produce -i events.jsonl
      freshrec produce --raw < mixed.jsonl   # let the worker validate and dead-letter

    Exit code 0 even when lines were invalid (they are dead-lettered and counted); 1 when Kafka
    could not take every message.
    """
    from confluent_kafka import KafkaException

    from freshrec.streams.deadletter import deadletter_record
    from freshrec.streams.producer import EventProducer
    from freshrec.streams.schema import InvalidEvent, decode_event

    settings = load_settings()
    _ensure_topics(settings)
    max_future_ms = int(settings.max_future_s * 1000)
    by_topic: Counter[str] = Counter()
    invalid: Counter[str] = Counter()
    refused = 0  # messages the producer refused outright (e.g. larger than 8 MiB)
    producer = EventProducer(settings, validate=False)
    t0 = time.perf_counter()
    for lineno, line in enumerate(input_file, 1):
        line = line.rstrip(b"\r\n")
        if not line.strip():
            continue
        try:
            if raw:
                producer.send_raw(settings.interactions_topic, line, _raw_key(line))
                by_topic[settings.interactions_topic] += 1
                continue
            try:
                event = decode_event(line, max_bytes=settings.max_event_bytes,
                                     now_ms=time.time_ns() // 1_000_000, max_future_ms=max_future_ms)
                by_topic[producer.send(event)] += 1
            except InvalidEvent as exc:
                invalid[exc.reason] += 1
                if sum(invalid.values()) <= SHOW_INVALID:
                    click.echo(f"line {lineno}: {exc.reason}: {exc.detail}", err=True)
                value, headers = deadletter_record(line, exc.reason, exc.detail, "stdin", -1, lineno)
                producer.send_raw(settings.deadletter_topic, value, None, headers)
        except KafkaException as exc:
            refused += 1
            click.echo(f"line {lineno}: not sent: {exc}", err=True)
    undelivered = producer.close(60.0)
    elapsed = time.perf_counter() - t0
    n_invalid = sum(invalid.values())
    topics = ", ".join(f"{t} {n:,}" for t, n in sorted(by_topic.items())) or "none"
    click.echo(f"produced {sum(by_topic.values()):,} {'raw lines' if raw else 'events'} ({topics}) "
               f"in {elapsed:.1f}s", err=True)
    if n_invalid:
        reasons = ", ".join(f"{r} {n:,}" for r, n in sorted(invalid.items()))
        click.echo(f"dead-lettered {n_invalid:,} invalid lines to {settings.deadletter_topic} ({reasons})", err=True)
    click.echo(f"delivered {producer.delivered:,}, failed {producer.failed:,}"
               + (f", undelivered {undelivered:,}" if undelivered else "")
               + (f", refused {refused:,}" if refused else ""), err=True)
    if producer.failed or undelivered or refused:
        if producer.errors:
            click.echo(f"delivery errors: {dict(producer.errors)}", err=True)
        sys.exit(1)


@click.command()
@click.option("--dataset", "spec", default="synthetic", show_default=True, metavar="SPEC",
              help="synthetic[:users=N,items=N,categories=N,events=N,seed=N,realtime=1], "
                   "movielens:PATH, mind:PATH or mind+history:PATH.")
@click.option("--rate", type=float, default=None, help="Events per second (default: as fast as possible).")
@click.option("--limit", type=int, default=None, help="Replay at most this many events.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar on stderr.")
def replay(spec: str, rate: float | None, limit: int | None, progress: bool) -> None:
    """Replay a data set into Kafka as events (creates the topics first if needed).

    Catalogue events come first, then interactions in event-time order. Event ids are
    deterministic, so replaying the same data twice does not double-count downstream.

    \b
    Examples:
      freshrec replay                                   # 1,000 items + 50,000 synthetic events
      freshrec replay --dataset synthetic:users=5000,events=200000,seed=1
      freshrec replay --dataset movielens:../shared/datasets/movielens-100k
      freshrec replay --dataset mind:../shared/datasets/mind-sample --rate 500
      freshrec replay --dataset synthetic:realtime=1 --rate 1000 --limit 60000
    """
    from freshrec.streams.datasets import load_dataset
    from freshrec.streams.producer import EventProducer
    from freshrec.streams.replay import replay as run_replay

    try:
        events = load_dataset(spec)
    except (ValueError, FileNotFoundError) as exc:
        raise click.BadParameter(str(exc), param_hint="--dataset") from exc
    if rate is not None and rate <= 0:
        raise click.BadParameter("must be > 0", param_hint="--rate")
    if limit is not None and limit < 0:
        raise click.BadParameter("must be >= 0", param_hint="--limit")
    settings = load_settings()
    _ensure_topics(settings)
    click.echo(f"replaying {events.name} into {settings.interactions_topic} / {settings.catalogue_topic} "
               f"at {settings.kafka_brokers}" + (f" at {rate:,.0f} events/s" if rate else ""), err=True)
    producer = EventProducer(settings)
    try:
        summary = run_replay(events, producer, rate=rate, progress=progress, limit=limit)
    finally:
        producer.close(5.0)
    click.echo(summary.format(), err=True)
    if summary.failed or summary.undelivered:
        if producer.errors:
            click.echo(f"delivery errors: {dict(producer.errors)}", err=True)
        sys.exit(1)


@click.command()
@click.option("--sessions", type=int, default=5000, show_default=True, help="User sessions to simulate.")
@click.option("--rate", type=float, default=200.0, show_default=True, help="Sessions per second (0: no pacing).")
@click.option("--users", "n_users", type=int, default=500, show_default=True)
@click.option("--items", "n_items", type=int, default=2000, show_default=True)
@click.option("--categories", "n_categories", type=int, default=10, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--catalogue/--no-catalogue", default=True, show_default=True,
              help="Upsert the world's items first (skip when they are already in the catalogue).")
def simulate(sessions: int, rate: float, n_users: int, n_items: int, n_categories: int, seed: int,
             catalogue: bool) -> None:
    """Closed-loop traffic: simulated users read their lists from Redis and react to them.

    Each session reads one user's published list (one GET, as a frontend does), sends an
    impression of its top 10 with the list's request_id, and clicks by the synthetic world's
    planted preferences (users prefer 1-2 categories). Users without a list browse (a click).
    This is the traffic that per-arm CTR, guardrails and `freshrec status` judge models by; the
    summary printed at the end is what the users saw and clicked, per arm and model.

    \b
    Example (worker running):
      freshrec simulate --sessions 20000 --rate 300
    """
    from freshrec.streams.closedloop import ClosedLoopUsers, run_closed_loop
    from freshrec.streams.datasets.synthetic import make_world

    if sessions < 0 or rate < 0:
        raise click.BadParameter("--sessions and --rate must be >= 0")
    try:
        world = make_world(n_users, n_items, n_categories, seed)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    settings = load_settings()
    _ensure_topics(settings)

    def progress(done: int, summary: dict) -> None:
        arms = ", ".join(f"{a} ctr {v['clicks'] / max(v['shown'], 1):.3f}" for a, v in sorted(summary["arms"].items()))
        click.echo(f"  {done:,}/{sessions:,} sessions; {summary['without_list']:,} without a list; {arms}", err=True)

    summary = run_closed_loop(settings, ClosedLoopUsers(world, seed), sessions, rate or None,
                              catalogue=catalogue, progress=progress)
    click.echo(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
