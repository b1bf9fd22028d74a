"""``freshrec status``: consumer lag from the broker, and what the worker last reported, in one view.

Lag per partition is read from the broker (committed offsets of the group against high
watermarks), so it is there when no worker runs; the worker's own figures (throughput,
freshness, dead letters by reason, model) come from the stats document it writes to Redis every
few seconds, with its age, so a stopped worker shows as stale rather than as healthy.
"""

from __future__ import annotations

import time
from typing import Any

import click
import orjson

from freshrec.settings import Settings, load_settings

STALE_AFTER_S = 30.0


def gather(settings: Settings, timeout_s: float = 10.0) -> dict[str, Any]:
    """Everything ``status`` shows, as plain data (what ``--json`` prints)."""
    import redis
    from confluent_kafka import Consumer, TopicPartition

    from freshrec.state.publisher import RedisKeys
    from freshrec.streams.lag import consumer_lag

    out: dict[str, Any] = {"app_id": settings.app_id, "kafka": settings.kafka_brokers, "errors": []}
    partitions = []
    for topic in (settings.interactions_topic, settings.catalogue_topic):
        try:
            partitions += [{"topic": p.topic, "partition": p.partition, "committed": p.committed,
                            "end": p.end, "lag": p.lag} for p in consumer_lag(settings.kafka_brokers, settings.app_id,
                                                                            topic, timeout_s)]
        except Exception as exc:  # noqa: BLE001 - shown, not raised: the rest may still answer
            out["errors"].append(f"kafka {topic}: {exc}")
    out["partitions"] = partitions
    out["total_lag"] = sum(p["lag"] for p in partitions)
    try:  # dead-letter topic size, from the broker
        c = Consumer({"bootstrap.servers": settings.kafka_brokers, "group.id": f"{settings.app_id}-status"})
        try:
            meta = c.list_topics(settings.deadletter_topic, timeout=timeout_s).topics.get(settings.deadletter_topic)
            if meta is not None and meta.error is None:
                out["deadletter_topic_events"] = sum(
                    hi - lo for lo, hi in (c.get_watermark_offsets(TopicPartition(settings.deadletter_topic, p),
                                                                   timeout=timeout_s) for p in meta.partitions))
        finally:
            c.close()
    except Exception as exc:  # noqa: BLE001
        out["errors"].append(f"kafka {settings.deadletter_topic}: {exc}")
    worker = None
    try:
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=timeout_s)
        raw = client.get(RedisKeys(settings.redis_prefix).worker_stats(settings.app_id))
        worker = orjson.loads(raw) if raw else None
    except Exception as exc:  # noqa: BLE001
        out["errors"].append(f"redis: {exc}")
    if worker is not None:
        age = time.time() - worker["ts"] / 1000.0 if worker.get("ts") else None
        counters = worker.get("counters", {})
        out["worker"] = {
            "engine": worker.get("engine"), "model": worker.get("model"),
            "stats_age_s": round(age, 1) if age is not None else None,
            "stale": age is None or age > STALE_AFTER_S,
            "events_per_s": worker.get("events_per_s"), "freshness_ms": worker.get("freshness_ms"),
            "ranked_freshness_ms": worker.get("ranked_freshness_ms"),
            "events": {k.split(":", 1)[1]: v for k, v in counters.items() if k.startswith("events:")},
            "deadletter": {k.split(":", 1)[1]: v for k, v in counters.items() if k.startswith("deadletter:")},
            "duplicates": counters.get("duplicates", 0), "redis_errors": worker.get("redis_errors", 0),
            "checkpoint_version": worker.get("checkpoint_version"),
            "users": worker.get("users"), "items": worker.get("items"),
            "rollout": worker.get("rollout"), "drift": worker.get("drift"),
        }
    else:
        out["worker"] = None
    try:  # the configured rollout (what workers converge to), also when no worker runs
        from freshrec.state.rollout_store import RolloutStore

        out["rollout"] = RolloutStore.connect(settings, timeout_s).load(settings).to_dict()
    except Exception as exc:  # noqa: BLE001
        out["errors"].append(f"rollout config: {exc}")
        out["rollout"] = None
    return out


def _fmt(v: Any, pattern: str = "{:.4f}") -> str:
    return "-" if v is None else pattern.format(v)


def render(status: dict[str, Any]) -> str:
    """The readable table of :func:`gather`'s result."""
    lines = [f"freshrec status: group {status['app_id']} on {status['kafka']}", ""]
    lines.append(f"{'topic':<40} {'partition':>9} {'committed':>10} {'end':>10} {'lag':>8}")
    for p in status["partitions"]:
        committed = p["committed"] if p["committed"] >= 0 else "-"
        lines.append(f"{p['topic']:<40} {p['partition']:>9} {committed!s:>10} {p['end']:>10} {p['lag']:>8}")
    lines.append(f"{'total lag':<40} {'':>9} {'':>10} {'':>10} {status['total_lag']:>8}")
    if "deadletter_topic_events" in status:
        lines.append(f"dead-letter topic: {status['deadletter_topic_events']} events")
    lines.append("")
    w = status["worker"]
    if w is None:
        lines.append("worker: no stats in Redis (never ran under this FRESHREC_APP_ID / FRESHREC_REDIS_PREFIX?)")
    else:
        state = "STALE (not running?)" if w["stale"] else "running"
        lines.append(f"worker: {state}, engine {w['engine']}, stats {w['stats_age_s']}s old, "
                     f"checkpoint v{w['checkpoint_version']}")
        f = w.get("freshness_ms") or {}
        rf = w.get("ranked_freshness_ms") or {}
        lines.append(f"  throughput {w['events_per_s']} events/s over the last stats interval (0 when idle); "
                     f"freshness p50 {f.get('p50')} ms, "
                     f"p99 {f.get('p99')} ms over the last {f.get('n')} lists (first list reflecting the event, "
                     f"ranked or quick); ranked lists p50 {rf.get('p50')} ms, p99 {rf.get('p99')} ms "
                     f"over {rf.get('n')}")
        lines.append(f"  users {w['users']}, items {w['items']}, duplicates skipped {w['duplicates']}, "
                     f"redis errors {w['redis_errors']}")
        lines.append("  events: " + (", ".join(f"{k} {v}" for k, v in sorted(w["events"].items())) or "none"))
        lines.append("  dead-lettered: " + (", ".join(f"{k} {v}" for k, v in sorted(w["deadletter"].items()))
                                             or "none"))
        lines.append("")
        r = w.get("rollout") or {"arms": {"champion": {"model": w["model"], "share": 1.0, "mode": "serve"}},
                                  "revision": 0, "status": "stable", "reason": ""}
        lines.append(f"rollout revision {r['revision']} ({r['status']}{': ' + r['reason'] if r.get('reason') else ''})")
        lines.append(f"{'arm':<11} {'model':<22} {'mode':<7} {'share':>6} {'lists':>8} {'errors':>6} "
                     f"{'shown':>8} {'clicks':>7} {'CTR':>7} {'HR@10':>7} {'AUC':>6} {'fresh p99':>10}")
        for arm, a in r["arms"].items():
            lines.append(f"{arm:<11} {a['model']!s:<22} {a.get('mode') or '-':<7} {_fmt(a.get('share'), '{:.0%}'):>6} "
                         f"{_fmt(a.get('lists'), '{}'):>8} {_fmt(a.get('errors'), '{}'):>6} "
                         f"{_fmt(a.get('impressions'), '{}'):>8} {_fmt(a.get('clicks'), '{}'):>7} "
                         f"{_fmt(a.get('ctr')):>7} {_fmt(a.get('hitrate')):>7} {_fmt(a.get('auc'), '{:.3f}'):>6} "
                         f"{_fmt(a.get('freshness_p99_ms'), '{} ms'):>10}")
        d = w.get("drift") or {}
        if d.get("psi"):
            top = sorted(d["psi"].items(), key=lambda kv: -kv[1])[:4]
            lines.append(f"drift (PSI, window of {d.get('window_rows')} served rows vs the previous, "
                         f"{d.get('windows')} windows): " + ", ".join(f"{k} {v:.3f}" for k, v in top)
                         + ("  <- shifted" if top and top[0][1] > 0.25 else ""))
        else:
            lines.append("drift: no full window yet")
    cfg = status.get("rollout")
    if cfg is not None:
        ch = cfg.get("challenger")
        lines.append(f"configured: champion {cfg['champion']['name']}-v{cfg['champion']['version']}"
                     + (f", challenger {ch['name']}-v{ch['version']} {cfg['mode']} {cfg['share']:.0%}" if ch else "")
                     + f" (revision {cfg['revision']}, {cfg['status']})")
    for e in status["errors"]:
        lines.append(f"error: {e}")
    return "\n".join(lines)


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON (for scripts).")
def status_command(as_json: bool) -> None:
    """Consumer-group lag per partition (from the broker, also when no worker runs), throughput,
    freshness p50/p99, dead letters, the arms (champion, challenger) with their online metrics
    (lists, shown items, clicks, CTR, HitRate@10, freshness) and drift of the worker named by
    FRESHREC_APP_ID, and the configured rollout."""
    st = gather(load_settings())
    click.echo(orjson.dumps(st, option=orjson.OPT_INDENT_2).decode() if as_json else render(st))
    if st["errors"] and not st["partitions"] and st["worker"] is None:
        raise SystemExit(1)
