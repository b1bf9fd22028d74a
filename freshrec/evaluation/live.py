"""``freshrec eval-live``: the prequential protocol end to end, through Kafka, a worker and Redis.

``freshrec eval`` runs the worker's ``state/`` code in process, test-then-train, which is fast and
exact. This command checks what a frontend really gets: a ``freshrec worker`` subprocess consumes
the data set from Kafka and publishes to Redis, while the replayer, before it produces each
positive engagement, reads the user's list from Redis with one GET (a user without a list gets
``freshrec:trending``, as a frontend would) and counts a hit when the item is in its top k. The
lists are as fresh as the worker made them at the replay rate, so HitRate@k here is lower than
in process at high rates: that gap is the cost of serving from Redis at that rate.

``--kill-at N`` sends SIGKILL to the worker after N interactions and starts a new one at once
(events keep flowing meanwhile); the new worker resumes from its newest checkpoint and replays
only the tail. The report gives the recovery time the worker printed, HitRate@k before and after
the kill, and whether the worker counted every interaction exactly once; run it with and without
``--kill-at`` to compare a crashed run with an uninterrupted one.
"""

from __future__ import annotations

import os
import re
import signal
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import click
import orjson

from freshrec.settings import Settings, load_settings
from freshrec.streams.schema import CATALOGUE_TYPES

RECOVERY_RE = re.compile(r"recovery (\d+\.\d+)s \(checkpoint v(\d+)\)")


@dataclass
class LiveResult:
    """Figures of one live run (see the module docstring)."""

    interactions: int = 0
    tests: int = 0
    hits: int = 0
    cold_tests: int = 0  # tests of users without a published list (served trending)
    tests_after_kill: int = 0
    hits_after_kill: int = 0
    produce_seconds: float = 0.0
    drain_seconds: float = 0.0
    recoveries: list[dict[str, float]] = field(default_factory=list)
    worker_counted: int | None = None  # interactions in the worker's counters at the end
    window_hitrates: list[float] = field(default_factory=list)  # per window of tests

    @property
    def hitrate(self) -> float:
        return self.hits / self.tests if self.tests else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["hitrate"] = round(self.hitrate, 4)
        before = self.tests - self.tests_after_kill
        out["hitrate_before_kill"] = round((self.hits - self.hits_after_kill) / before, 4) if before else None
        out["hitrate_after_kill"] = (round(self.hits_after_kill / self.tests_after_kill, 4)
                                     if self.tests_after_kill else None)
        out["produce_rate"] = round(self.interactions / self.produce_seconds) if self.produce_seconds else None
        return out


def _top_ids(raw: bytes | None, k: int) -> list[str]:
    if raw is None:
        return []
    return [e["item_id"] for e in orjson.loads(raw)["items"][:k]]


def _interactions_counted(stats_raw: bytes | None) -> int | None:
    """Interaction events applied, from the worker's stats document (None: no stats yet)."""
    if not stats_raw:
        return None
    counters = orjson.loads(stats_raw)["counters"]
    return sum(v for c, v in counters.items()
               if c.startswith("events:") and c.split(":", 1)[1] not in CATALOGUE_TYPES)


def run_live(settings: Settings, events: Iterable[dict], *, rate: float, k: int = 10, sample_every: int = 1,
             kill_at: int | None = None, home: Path, window: int = 1000, progress: bool = True) -> LiveResult:
    """Replay ``events`` at ``rate`` interactions/s through a worker and test the published lists.

    ``settings`` must name topics, group and Redis prefix of their own (nothing else may use them).
    """
    import redis

    from freshrec.cli import start_worker_process, stop_process, wait_caught_up
    from freshrec.evaluation.methods import POSITIVES
    from freshrec.state.publisher import RedisKeys
    from freshrec.streams.producer import EventProducer
    from freshrec.streams.topics import ensure_topics

    events = list(events)
    catalogue = [e for e in events if e["type"] in CATALOGUE_TYPES]
    interactions = [e for e in events if e["type"] not in CATALOGUE_TYPES]
    if not interactions:
        raise click.ClickException("the data set has no interaction events")
    ensure_topics(settings)
    log_path = home / "worker.log"
    env = {"FRESHREC_HOME": str(home)}
    keys = RedisKeys(settings.redis_prefix)
    client = redis.Redis.from_url(settings.redis_url)
    res = LiveResult()
    procs = [start_worker_process(settings, log_path, extra_env=env)]
    try:
        with EventProducer(settings) as producer:
            for e in catalogue:
                producer.send(e)
            producer.flush(60)
            wait_caught_up(settings, timeout_s=300, quiet=True, proc=procs[-1])
            history: dict[str, set[str]] = {}
            testable = 0
            window_tests = window_hits = 0
            killed = False
            t0 = time.monotonic()
            last_report = t0
            for n, e in enumerate(interactions):
                if kill_at is not None and n == kill_at:
                    procs[-1].send_signal(signal.SIGKILL)
                    procs[-1].wait(timeout=30)
                    click.echo(f"  killed the worker (SIGKILL) after {n:,} interactions; restarting", err=True)
                    procs.append(start_worker_process(settings, log_path, extra_env=env))
                    killed = True
                user, etype = e["user_id"], e["type"]
                if etype in POSITIVES:
                    item = e["item_id"]
                    seen = history.setdefault(user, set())
                    if item not in seen:
                        testable += 1
                        if (testable - 1) % sample_every == 0:
                            top = _top_ids(client.get(keys.recs(user)), k)
                            if not top:
                                res.cold_tests += 1
                                top = [i for i in _top_ids(client.get(keys.trending()), k + len(seen))
                                       if i not in seen][:k]
                            hit = item in top
                            res.tests += 1
                            res.hits += hit
                            window_tests += 1
                            window_hits += hit
                            if killed:
                                res.tests_after_kill += 1
                                res.hits_after_kill += hit
                            if window_tests == window:
                                res.window_hitrates.append(round(window_hits / window_tests, 4))
                                window_tests = window_hits = 0
                    seen.add(item)
                elif etype == "user_delete":
                    history.pop(user, None)
                producer.send(e)
                res.interactions += 1
                ahead = t0 + (n + 1) / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
                if progress and time.monotonic() - last_report >= 5.0:
                    last_report = time.monotonic()
                    click.echo(f"  {n + 1:,}/{len(interactions):,} interactions, HitRate@{k} so far "
                               f"{res.hitrate:.4f} over {res.tests:,} tests", err=True)
            producer.flush(60)
            res.produce_seconds = time.monotonic() - t0
        t1 = time.monotonic()
        wait_caught_up(settings, timeout_s=900, quiet=True, proc=procs[-1])
        res.drain_seconds = time.monotonic() - t1
        time.sleep(max(1.0, settings.recompute_interval_ms / 1000.0))
        deadline = time.monotonic() + 20  # the worker writes its stats every 5 s
        while True:
            res.worker_counted = _interactions_counted(client.get(keys.worker_stats(settings.app_id)))
            if res.worker_counted == res.interactions or time.monotonic() > deadline:
                break
            time.sleep(1)
    finally:
        for proc in procs:
            stop_process(proc)
    for seconds, version in RECOVERY_RE.findall(log_path.read_text(errors="replace")):
        res.recoveries.append({"seconds": float(seconds), "checkpoint": int(version)})
    return res


@click.command("eval-live")
@click.option("--dataset", required=True, help="What to replay (as for `freshrec eval`), e.g. "
                                              "movielens:../shared/datasets/movielens-100k.")
@click.option("--rate", type=click.FloatRange(min=1), default=2000.0, show_default=True,
              help="Interactions produced per second.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N interactions.")
@click.option("--k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="List length.")
@click.option("--sample-every", type=click.IntRange(min=1), default=1, show_default=True,
              help="Test every N-th first-time positive engagement.")
@click.option("--kill-at", type=click.IntRange(min=1), default=None,
              help="SIGKILL the worker after this many interactions and start a new one at once.")
@click.option("--checkpoint-interval-s", type=click.FloatRange(min=0.5), default=None,
              help="The worker's checkpoint interval (default FRESHREC_CHECKPOINT_INTERVAL_S).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the figures as JSON here.")
def eval_live_command(dataset: str, rate: float, limit: int | None, k: int, sample_every: int,
                      kill_at: int | None, checkpoint_interval_s: float | None, out: Path | None) -> None:
    """Prequential HitRate@k end to end: replay through Kafka, a real worker, lists read from Redis.

    Uses the local services (`freshrec dev up`, started if needed) unless FRESHREC_KAFKA_BROKERS
    and FRESHREC_REDIS_URL point elsewhere; topics, consumer group and Redis keys are fresh per run.
    With --kill-at, also reports the worker's recovery and whether every event was counted once.
    """
    from freshrec.evaluation.prequential import limit_interactions
    from freshrec.streams.datasets import load_dataset

    if not os.environ.get("FRESHREC_KAFKA_BROKERS"):
        from freshrec.localinfra.stack import DevStack

        DevStack().up()
    try:
        events = list(limit_interactions(load_dataset(dataset), limit))
    except (FileNotFoundError, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint="--dataset") from None
    run = f"live-{time.strftime('%Y%m%d%H%M%S')}-{os.getpid()}"
    settings = load_settings().replace(topic_prefix=run, app_id=run, redis_prefix=run, web_port=0, engine="stream")
    if checkpoint_interval_s is not None:
        settings = settings.replace(checkpoint_interval_s=checkpoint_interval_s)
    with tempfile.TemporaryDirectory(prefix="freshrec-live-") as tmp:
        home = Path(tmp)
        click.echo(f"eval-live {dataset}: {run}, model {settings.model}, {rate:,.0f} interactions/s"
                   + (f", SIGKILL after {kill_at:,}" if kill_at else ""), err=True)
        try:
            res = run_live(settings, events, rate=rate, k=k, sample_every=sample_every, kill_at=kill_at, home=home)
        except Exception:
            log = home / "worker.log"
            if log.exists():
                click.echo("worker log tail:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:]),
                           err=True)
            raise
    d = res.as_dict()
    click.echo(f"interactions {res.interactions:,} produced in {res.produce_seconds:.1f}s "
               f"({d['produce_rate']:,}/s); worker drained the rest in {res.drain_seconds:.1f}s")
    click.echo(f"HitRate@{k} from Redis: {res.hitrate:.4f} over {res.tests:,} tests "
               f"({res.cold_tests:,} served trending: no list yet)")
    if kill_at:
        click.echo(f"  before the kill {d['hitrate_before_kill']}, after {d['hitrate_after_kill']} "
                   f"({res.tests_after_kill:,} tests)")
    for r in res.recoveries:
        click.echo(f"worker start: recovery {r['seconds']:.2f}s from checkpoint v{int(r['checkpoint'])}")
    if res.worker_counted is not None:
        verdict = "exactly once" if res.worker_counted == res.interactions else "MISMATCH"
        click.echo(f"worker counted {res.worker_counted:,} of {res.interactions:,} interactions ({verdict})")
    if out is not None:
        out.write_bytes(orjson.dumps({"dataset": dataset, "rate": rate, "k": k, "kill_at": kill_at, **d},
                                     option=orjson.OPT_INDENT_2))
        click.echo(f"wrote {out}")
    if res.worker_counted is not None and res.worker_counted != res.interactions:
        raise click.ClickException("the worker's event counts do not match what was produced")
