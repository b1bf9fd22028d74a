"""One typed settings object, read from ``FRESHREC_*`` environment variables.

Every command and the worker build their configuration with :func:`load_settings`. When the
Kafka/Redis addresses are not given in the environment, the addresses written by
``freshrec dev up`` (``.freshrec/dev/services.json``) are used, so the local stack "just works".
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import orjson

ENV_PREFIX = "FRESHREC_"


def state_dir() -> Path:
    """Where local runtime files live (dev services, worker data). Ignored by git."""
    return Path(os.environ.get("FRESHREC_HOME", ".freshrec")).resolve()


def cache_dir() -> Path:
    """Download cache (Kafka jars), shared by every checkout on the machine."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "freshrec"
    return Path(os.environ.get("FRESHREC_CACHE_DIR", default)).resolve()


def dev_services_file() -> Path:
    return state_dir() / "dev" / "services.json"


def _dev_services() -> dict[str, str]:
    path = dev_services_file()
    if path.exists():
        try:
            return orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError:
            return {}
    return {}


@dataclass(frozen=True)
class Settings:
    """All configuration. Field ``x`` is read from ``FRESHREC_X`` (upper case)."""

    # --- where things are
    kafka_brokers: str = "localhost:9092"  # comma-separated bootstrap servers
    redis_url: str = "redis://localhost:6379/0"
    topic_prefix: str = "freshrec"  # topics are {prefix}.interactions, {prefix}.catalogue, ...
    partitions: int = 8  # partitions of the interactions and catalogue topics (created on start)
    replication_factor: int = 1
    app_id: str = "freshrec"  # Faust app id = consumer group and changelog topic prefix
    web_port: int = 6066  # worker HTTP: /metrics, /health, /ready (stream engine; Faust's web on faust); 0: off
    web_host: str = "127.0.0.1"  # bind address of the worker HTTP endpoints (0.0.0.0 in containers)
    # --- input contract
    max_event_bytes: int = 65536  # larger payloads are dead-lettered as oversized
    max_future_s: float = 86400.0  # events with ts further in the future are dead-lettered
    # --- online features
    half_life_s: float = 86400.0  # event-time half-life of popularity / co-visitation decay
    history_len: int = 50  # per user: last N items kept (with time)
    seen_max: int = 2000  # per user: bounded seen set
    dedupe_window: int = 1000  # per user: recent event_ids remembered for idempotence
    covis_window: int = 20  # co-visitation pairs with the user's last W items
    covis_half_life_s: float = 30 * 86400.0  # event-time half-life of co-visitation weights
    covis_max_neighbors: int = 200  # per item: strongest co-visited neighbours kept
    ctr_prior_clicks: float = 1.0  # Beta prior for CTR: (clicks + a) / (impressions + a + b)
    ctr_prior_impressions: float = 20.0
    # --- recommendations and publishing
    recs_k: int = 20  # list length published per user
    similar_k: int = 20
    trending_k: int = 50
    recompute_interval_ms: int = 200  # a user's list is recomputed at most once per interval
    recompute_budget_ms: int = 100  # at most this long recomputing lists per flush (0: no limit)
    recompute_budget_behind_ms: int = 25  # the same while the worker is behind (catching up first)
    quick_lists: bool = True  # users a flush's budget leaves waiting get a quick list (state/quicklists.py) until ranked
    quick_related: int = 5  # slots of a quick list for co-visitation neighbours of the items engaged with since the ranked list
    trending_interval_ms: int = 1000  # trending / similar lists refresh interval
    covis_refresh_ms: int = 5000  # an item's normalised co-visitation neighbour list is re-made at most once per interval after its row changed
    similar_refresh_ms: int = 10_000  # an item's similar list is made at most once per interval (deletions at once)
    redis_prefix: str = "freshrec"
    recs_ttl_s: int = 7 * 86400  # TTL of published keys; 0 = no expiry
    # --- learning recommender (state/ranking.py); model "covis" is the counting baseline
    model: str = "learning"  # "learning" (MF + HNSW + content + click model) or "covis"
    mf_factors: int = 32  # online MF latent dimensions
    mf_lr: float = 0.25  # online MF learning rate (see state/embeddings.py for the measured cliff)
    weight_click: float = 1.0  # MF positive weight of a click
    weight_conversion: float = 2.0
    weight_rating: float = 1.0  # ratings >= rating_positive_min are positives with this weight
    rating_positive_min: float = 0.0  # 0: every rating is a positive; e.g. 4 on a 1-5 scale
    weight_dismiss: float = 1.0  # MF negative weight of a dismissal (and of low ratings)
    weight_impression: float = 0.05  # MF negative weight of each shown item (a click overrides it)
    click_window_s: float = 600.0  # event time an impression waits for its clicks before it is learned
    click_lr: float = 0.008  # SGD learning rate of the click model
    click_negatives: int = 8  # sampled candidate negatives per positive without an impression
    click_sample_behind: float = 0.1  # share of impressions the click model learns while the worker is behind or lists wait
    ann_candidates: int = 50  # candidates from the MF item index per user (100: 7% more list CPU, same HitRate; README)
    ann_exact_max_work: int = 1 << 18  # list queries scan an index exactly while live items x dims is at most this (0: always the HNSW graph)
    content_candidates: int = 20  # candidates from the content index per user
    fresh_candidates: int = 20  # newest catalogue items considered per user
    explore_share: float = 0.1  # share of list slots for exploration (Thompson sampling on CTR)
    explore_max_views: int = 100  # an item is explored while impressions + engagements are below this
    fresh_window_s: float = 2 * 86400.0  # items upserted within this event time count as fresh
    diversity_max_share: float = 0.7  # at most this share of a list from one category (1 = no cap)
    index_refresh_ms: int = 1000  # dirty item vectors re-indexed in one batch per interval
    index_batch_max: int = 500  # at most this many items re-indexed per refresh (most changed first)
    index_batch_max_behind: int = 100  # the same while the worker is behind (the rest stay dirty, most-moved first)
    drift_window: int = 5000  # served feature rows per drift (PSI) window, see state/drift.py
    checkpoint_interval_s: float = 30.0  # stream engine: state + offsets checkpoint interval
    checkpoint_keep: int = 3  # checkpoints kept
    engine: str = "stream"  # worker engine: "stream" (confluent-kafka, checkpoints) or "faust"
    seed: int = 0  # seeds model initialisation and exploration
    # --- batching
    batch_max: int = 2000  # events per processing batch
    batch_within_ms: int = 20  # max wait to fill a batch
    behind_lag_ms: int = 500  # stream engine: behind (shedding load) when a batch's oldest message waited longer (0: off)
    catalogue_first_max_s: float = 120.0  # stream engine: on assignment, read the catalogue backlog before interactions, at most this long (0: off)

    @property
    def interactions_topic(self) -> str:
        return f"{self.topic_prefix}.interactions"

    @property
    def catalogue_topic(self) -> str:
        return f"{self.topic_prefix}.catalogue"

    @property
    def deadletter_topic(self) -> str:
        return f"{self.topic_prefix}.deadletter"

    @property
    def audit_topic(self) -> str:
        return f"{self.topic_prefix}.audit"

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process."""
        return {ENV_PREFIX + f.name.upper(): str(getattr(self, f.name)) for f in fields(self)}


def _coerce(raw: str, typ: Any, name: str) -> Any:
    try:
        if typ in (int, "int"):
            return int(raw)
        if typ in (float, "float"):
            return float(raw)
        if typ in (bool, "bool"):
            return raw.strip().lower() in ("1", "true", "yes", "on")
        return raw
    except ValueError as exc:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r}: expected {typ}") from exc


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from ``env`` (default ``os.environ``), dev-stack addresses, then ``overrides``."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    dev = _dev_services()
    if dev.get("kafka_brokers"):
        values["kafka_brokers"] = dev["kafka_brokers"]
    if dev.get("redis_url"):
        values["redis_url"] = dev["redis_url"]
    for f in fields(Settings):
        key = ENV_PREFIX + f.name.upper()
        if key in env and env[key] != "":
            values[f.name] = _coerce(env[key], f.type, f.name)
    values.update(overrides)
    return Settings(**values)
