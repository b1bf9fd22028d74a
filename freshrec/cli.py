"""``freshrec``: the command line. Run ``freshrec --help``, or ``freshrec COMMAND --help``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator

import click
import numpy  # noqa: F401  (loaded before threadpool_limits looks for its BLAS)
import orjson
from threadpoolctl import threadpool_limits

from freshrec.settings import Settings, load_settings, state_dir


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """freshrec: a streaming real-time recommender.

    Interaction and catalogue events go into Kafka, a worker learns from them event by event
    (online features, online MF, HNSW indices, a River click model) and publishes fresh ranked
    lists to Redis, where frontends read them with one GET.

    \b
    Typical local session:
      freshrec dev up                 # local Kafka (KRaft) + redis-server on free ports
      freshrec worker &               # consume, learn, publish
      freshrec replay --dataset synthetic
      freshrec recs 42                # the list a frontend would read
    Or all at once: freshrec demo.

    Configuration comes from FRESHREC_* environment variables (see the README); without
    FRESHREC_KAFKA_BROKERS / FRESHREC_REDIS_URL the addresses of `freshrec dev up` are used.
    """
    # One BLAS thread: the worker is one loop of small products, and OpenBLAS's extra threads
    # spin after each call. With them, the exact scans of a small index (state/ann.py) took a
    # list from 0.40 to 0.82 ms of CPU (in process, after 150k synthetic events).
    threadpool_limits(limits=1, user_api="blas")


@main.command()
@click.option("--loglevel", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--engine", type=click.Choice(["stream", "faust"]), default=None,
              help="stream (default, FRESHREC_ENGINE): confluent-kafka loop, learning models, "
                   "checkpoints of the whole state with their offsets. faust: Faust agents with "
                   "changelog-backed feature tables, counting baseline (model covis) only.")
def worker(loglevel: str, engine: str | None) -> None:
    """Run the stream worker with settings from the environment.

    Creates the topics when missing, recovers its state (stream engine: the newest checkpoint,
    then only the tail of the topics; faust engine: tables from their changelogs), then consumes
    interactions and catalogue events, learns, and publishes lists to Redis until stopped
    (SIGTERM/SIGINT: the stream engine writes a last checkpoint). The recovery time is printed.
    """
    settings = load_settings()
    engine = engine or settings.engine
    if engine == "stream":
        from freshrec.agents.stream_worker import run_stream_worker

        run_stream_worker(settings, loglevel=loglevel)
        return
    if engine != "faust":
        raise click.BadParameter(f"FRESHREC_ENGINE={engine!r}: expected stream or faust")
    from freshrec.agents.app import run_worker

    if settings.model != "covis":
        click.echo(f"faust engine: model {settings.model!r} is not persisted by this engine; "
                   "running the counting baseline (model covis)", err=True)
        settings = settings.replace(model="covis")
    sys.argv = [sys.argv[0], "worker"]  # Faust's worker parses argv; keep ours out of it
    run_worker(settings, loglevel=loglevel)


def read_recs(settings: Settings, user_id: str) -> dict | None:
    """The published list document for ``user_id``, or None when there is none."""
    import redis

    from freshrec.state.publisher import RedisKeys

    raw = redis.Redis.from_url(settings.redis_url).get(RedisKeys(settings.redis_prefix).recs(user_id))
    return None if raw is None else orjson.loads(raw)


def format_recs(doc: dict, catalogue_titles: dict[str, str] | None = None) -> str:
    lines = [f"user {doc['user_id']}  model={doc['model']}  tier={doc.get('tier', 'ranked')}  "
             f"generated_at={doc['generated_at']}  event_ts={doc['event_ts']}  ({len(doc['items'])} items)"]
    for rank, entry in enumerate(doc["items"], 1):
        title = (catalogue_titles or {}).get(entry["item_id"], "")
        lines.append(f"  {rank:>3}. {entry['item_id']:<12} {entry['score']:>10.5f}  {title}")
    return "\n".join(lines)


@main.command()
@click.argument("user_id")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON document.")
def recs(user_id: str, as_json: bool) -> None:
    """Print USER_ID's recommendation list as published in Redis (what a frontend reads)."""
    settings = load_settings()
    doc = read_recs(settings, user_id)
    if doc is None:
        raise click.ClickException(
            f"no list for user {user_id!r} in {settings.redis_url} (key "
            f"{settings.redis_prefix}:recs:{user_id}); has the worker seen events for this user?")
    click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() if as_json else format_recs(doc))


def start_worker_process(settings: Settings, log_path: Path,
                         extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``freshrec worker`` as a child process with ``settings`` in its environment."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **settings.to_env(), **(extra_env or {})}
    return subprocess.Popen([sys.executable, "-m", "freshrec", "worker"], env=env,
                            stdout=log_path.open("ab"), stderr=subprocess.STDOUT)


def stop_process(proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """SIGTERM ``proc`` if it still runs, then SIGKILL it when it outlives ``timeout_s``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_caught_up(settings: Settings, timeout_s: float = 600.0, quiet: bool = False,
                   proc: subprocess.Popen | None = None) -> float:
    """Block until the worker's consumer group has no lag; returns the seconds waited."""
    from freshrec.streams.lag import total_lag

    t0 = time.monotonic()
    last_print = 0.0
    topics = [settings.interactions_topic, settings.catalogue_topic]
    while True:
        if proc is not None and proc.poll() is not None:
            raise click.ClickException(f"the worker exited with code {proc.returncode}")
        try:
            lag = total_lag(settings.kafka_brokers, settings.app_id, topics)
        except Exception:  # noqa: BLE001 - the group may not exist yet
            lag = -1
        elapsed = time.monotonic() - t0
        if lag == 0:
            return elapsed
        if elapsed > timeout_s:
            raise click.ClickException(f"worker still lagging ({lag} events) after {timeout_s:.0f}s")
        if not quiet and elapsed - last_print >= 2.0:
            click.echo(f"  waiting for the worker: lag {lag if lag >= 0 else '?'} events", err=True)
            last_print = elapsed
        time.sleep(0.25)


@main.command()
@click.option("--dataset", default="synthetic:realtime=1", show_default=True,
              help="What to replay: synthetic[:users=..,items=..,events=..,realtime=1], movielens:PATH, "
                   "mind:PATH. realtime=1 stamps events with the wall clock, so freshness is meaningful.")
@click.option("--rate", type=float, default=None, help="Replay rate in events/s (default: as fast as possible).")
@click.option("--limit", type=int, default=None, help="Replay at most this many events.")
@click.option("--show", "show_users", default=3, show_default=True, help="How many users' lists to print.")
@click.option("--keep-running/--stop-worker", default=False, show_default=True,
              help="Leave the worker running after the replay.")
@click.option("--closed-loop", "closed_loop", default=2000, show_default=True,
              help="Synthetic data sets: then simulate this many user sessions that read their lists "
                   "from Redis and click on them (per-arm CTR in `freshrec status`); 0: skip.")
def demo(dataset: str, rate: float | None, limit: int | None, show_users: int, keep_running: bool,
         closed_loop: int) -> None:
    """The whole pipeline locally: services up, worker, replay with progress, lists from Redis.

    Starts Kafka and Redis (`freshrec dev up`), creates fresh topics for this run, starts a
    worker, replays DATASET into Kafka, waits until the worker has consumed everything and
    prints a few users' recommendation lists read back from Redis. With a synthetic data set,
    simulated users then read and click their lists for a while (closed loop), and the
    operator's view (`freshrec status`) is printed.
    """
    from freshrec.localinfra.stack import DevStack
    from freshrec.streams.datasets import load_dataset
    from freshrec.streams.producer import EventProducer
    from freshrec.streams.replay import replay as run_replay
    from freshrec.streams.topics import ensure_topics

    click.echo("1/4 starting local Kafka and Redis ...", err=True)
    DevStack().up()
    run = time.strftime("%Y%m%d%H%M%S")
    base = load_settings()
    settings = base.replace(topic_prefix=f"{base.topic_prefix}-demo-{run}", app_id=f"{base.app_id}-demo-{run}")
    ensure_topics(settings)
    log_path = state_dir() / "demo" / f"worker-{run}.log"
    click.echo(f"2/4 starting the worker (log: {log_path}) ...", err=True)
    proc = start_worker_process(settings, log_path)
    try:
        click.echo(f"3/4 replaying {dataset} into {settings.interactions_topic} ...", err=True)
        active: dict[str, None] = {}  # users of this replay, most recently active last
        labels: dict[str, str] = {}  # item -> "category: title", from the catalogue events

        def tap(events: Iterable[dict]) -> Iterator[dict]:
            for event in events:
                if event["type"] == "item_upsert":
                    labels[event["item_id"]] = f"{event.get('category') or '-'}: {event.get('text', '')[:50]}"
                user = event.get("user_id")
                if user is not None:
                    active.pop(user, None)
                    active[user] = None
                    if len(active) > 1000:
                        del active[next(iter(active))]
                yield event

        events = load_dataset(dataset)
        with EventProducer(settings) as producer:
            summary = run_replay(tap(events), producer, rate=rate, progress=True, limit=limit)
        click.echo(summary.format(), err=True)
        click.echo("4/4 waiting for the worker to catch up ...", err=True)
        waited = wait_caught_up(settings, proc=proc)
        time.sleep((settings.recompute_interval_ms + settings.trending_interval_ms) / 1000.0 + 0.5)
        click.echo(f"worker caught up {waited:.1f}s after the replay ended\n", err=True)
        _print_lists(settings, list(active)[-show_users:], labels)
        world = getattr(events, "world", None)
        if closed_loop > 0 and world is not None:
            from freshrec.status import gather, render
            from freshrec.streams.closedloop import ClosedLoopUsers, run_closed_loop

            click.echo(f"\nclosed loop: {closed_loop:,} simulated sessions read their lists and click ...", err=True)
            loop = run_closed_loop(settings, ClosedLoopUsers(world, seed=settings.seed), closed_loop, rate=400,
                                   catalogue=False)
            for arm, v in sorted(loop["arms"].items()):
                click.echo(f"  {arm}: {v['sessions']:,} sessions, {v['shown']:,} shown, {v['clicks']:,} clicks, "
                           f"CTR {v['ctr']}", err=True)
            wait_caught_up(settings, proc=proc, quiet=True)
            time.sleep(6)  # the worker's next stats document
            click.echo("\n" + render(gather(settings)))
    finally:
        if not keep_running:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    click.echo("\nTry: freshrec recs <user_id>   (services stay up; `freshrec dev down` stops them)", err=True)


def _print_lists(settings: Settings, users: list[str], labels: dict[str, str]) -> None:
    import redis

    client = redis.Redis.from_url(settings.redis_url)
    shown = 0
    for user in users:
        doc = read_recs(settings, user)
        if doc is not None:
            click.echo(format_recs(doc, labels) + "\n")
            shown += 1
    if not shown:
        raise click.ClickException(f"no recommendation lists in Redis for users {users}")
    raw = client.get(f"{settings.redis_prefix}:trending")
    if raw:
        doc = orjson.loads(raw)
        click.echo("trending now: " + ", ".join(e["item_id"] for e in doc["items"][:10]))


def _register_commands() -> None:
    """Commands defined next to the code they drive."""
    from freshrec.bench import bench
    from freshrec.evaluation.cli import eval_command
    from freshrec.evaluation.live import eval_live_command
    from freshrec.rollout_cli import model_group, rollout_group
    from freshrec.status import status_command
    from freshrec.localinfra.cli import dev
    from freshrec.streams.cli import produce, replay, simulate

    for command in (dev, produce, replay, simulate, bench, eval_command, eval_live_command, status_command,
                    model_group, rollout_group):
        main.add_command(command)


_register_commands()
