"""Model registry and rollout configuration: named, versioned model specs and who serves whom.

A :class:`ModelSpec` is a named, versioned model configuration: a ``kind`` (``learning``: the
two-stage learning recommender; ``covis``: the counting baseline; ``random``: random catalogue
items, a deliberately bad model to rehearse rollbacks with) and ``params``, overrides of the
model's settings (e.g. ``{"explore_share": 0.2}``). Specs are immutable once registered: a change
is a new version.

A :class:`RolloutConfig` says which spec is the **champion** (serves everyone not assigned
elsewhere) and, optionally, which is the **challenger** and how it runs:

* ``shadow``: the challenger ranks the users of its share, its lists are scored against the
  users' next interactions and reported, and never written to Redis;
* ``canary`` / ``ab``: a stable hash of the user id (:func:`arm_of`) assigns ``share`` of the
  users to the challenger, which serves them. (The two differ only in intent: a canary is a small
  share guarded for rollback, an A/B test an even split; guardrails apply to both.)

The configuration lives in Redis (``{prefix}:rollout``, one JSON document, with a ``revision``
that increases on every change); workers poll it and apply changes live, without a restart
(:mod:`freshrec.state.rollout`). The CLI (``freshrec model`` / ``freshrec rollout``) edits it
and writes every change to the audit topic.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import orjson

from freshrec.settings import Settings

KINDS = ("learning", "covis", "random")
MODES = ("shadow", "canary", "ab")
CHAMPION, CHALLENGER = "champion", "challenger"
# settings a model spec may override: model hyper-parameters, never infrastructure
TUNABLE = frozenset({
    "mf_factors", "mf_lr", "weight_click", "weight_conversion", "weight_rating", "rating_positive_min",
    "weight_dismiss", "weight_impression", "click_window_s", "click_lr", "click_negatives",
    "ann_candidates", "content_candidates", "fresh_candidates", "explore_share", "explore_max_views",
    "fresh_window_s", "diversity_max_share", "index_refresh_ms", "index_batch_max", "index_batch_max_behind", "seed",
    "covis_window", "half_life_s", "covis_half_life_s",
})
HASH_BUCKETS = 10_000


class RegistryError(ValueError):
    """A spec or rollout change that cannot be applied (the message says why)."""


@dataclass(frozen=True)
class ModelSpec:
    """A named, versioned model configuration."""

    name: str
    version: int
    kind: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``name-vN``: how lists, metrics and the audit trail name this model."""
        return f"{self.name}-v{self.version}"

    def validate(self) -> "ModelSpec":
        if not self.name or any(c in self.name for c in " :|/"):
            raise RegistryError(f"model name {self.name!r}: use letters, digits, '-', '_' or '.'")
        if self.kind not in KINDS:
            raise RegistryError(f"model kind {self.kind!r}: expected one of {', '.join(KINDS)}")
        unknown = set(self.params) - TUNABLE
        if unknown:
            raise RegistryError(f"model {self.name}: cannot override {', '.join(sorted(unknown))} "
                                f"(tunable: {', '.join(sorted(TUNABLE))})")
        types = {f.name: f.type for f in fields(Settings)}
        for key, value in self.params.items():
            want = types[key]
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) if want in (float, "float") \
                else isinstance(value, int) and not isinstance(value, bool)
            if not ok:
                raise RegistryError(f"model {self.name}: {key}={value!r} must be {want}")
        return self

    def settings(self, base: Settings) -> Settings:
        """``base`` with this spec's kind and parameter overrides (what its recommender runs on)."""
        return base.replace(model="covis" if self.kind == "covis" else "learning", **self.params)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        return cls(str(d["name"]), int(d["version"]), str(d["kind"]), dict(d.get("params") or {}))


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """``["explore_share=0.2", "ann_candidates=100"]`` -> typed overrides (clear error when bad)."""
    types = {f.name: f.type for f in fields(Settings)}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or key not in TUNABLE:
            raise RegistryError(f"--set {pair!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(TUNABLE))}")
        try:
            out[key] = float(raw) if types[key] in (float, "float") else int(raw)
        except ValueError:
            raise RegistryError(f"--set {pair!r}: {key} must be {types[key]}") from None
    return out


@dataclass(frozen=True)
class Guardrails:
    """When a challenger is rolled back automatically (checked over a minimum sample).

    * CTR: the challenger's CTR (clicks per shown item, joined by ``request_id``) is below
      ``(1 - max_ctr_drop)`` times the champion's, once both arms have ``min_impressions`` shown
      items and the gap is significant (one-sided two-proportion z-test, ``z >= min_z``);
    * errors: more than ``max_error_rate`` of the challenger's list computations raised, over at
      least ``min_lists`` lists;
    * freshness: the challenger's p99 freshness exceeds ``max_freshness_p99_s`` over at least
      ``min_lists`` lists.
    """

    min_impressions: int = 1000
    max_ctr_drop: float = 0.2
    min_z: float = 3.0  # checked after every flush: a strict z keeps repeated looks from false alarms
    max_error_rate: float = 0.01
    max_freshness_p99_s: float = 60.0
    min_lists: int = 100

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Guardrails":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in known})


@dataclass(frozen=True)
class RolloutConfig:
    """Champion, optional challenger and its mode/share, guardrails; ``revision`` orders changes."""

    champion: ModelSpec
    challenger: ModelSpec | None = None
    mode: str | None = None  # shadow | canary | ab (None without a challenger)
    share: float = 0.0  # share of users assigned to the challenger arm
    guardrails: Guardrails = field(default_factory=Guardrails)
    revision: int = 0
    salt: str = "freshrec"  # arm assignment hash salt: a new salt reshuffles who is in which arm
    status: str = "stable"  # stable | running | promoted | rolled_back
    reason: str = ""  # why the last change happened (shown by status, copied into the audit)

    def validate(self) -> "RolloutConfig":
        self.champion.validate()
        if self.challenger is not None:
            self.challenger.validate()
            if self.mode not in MODES:
                raise RegistryError(f"rollout mode {self.mode!r}: expected one of {', '.join(MODES)}")
            if not 0.0 < self.share <= 1.0:
                raise RegistryError(f"share {self.share}: expected 0 < share <= 1")
            if self.challenger.label == self.champion.label:
                raise RegistryError(f"{self.challenger.label} is already the champion")
        return self

    def with_changes(self, **changes: Any) -> "RolloutConfig":
        """A new revision of this config (validated)."""
        return replace(self, revision=self.revision + 1, **changes).validate()

    def arms(self) -> dict[str, ModelSpec]:
        out = {CHAMPION: self.champion}
        if self.challenger is not None:
            out[CHALLENGER] = self.challenger
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"champion": self.champion.to_dict(),
                "challenger": self.challenger.to_dict() if self.challenger else None,
                "mode": self.mode, "share": self.share, "guardrails": asdict(self.guardrails),
                "revision": self.revision, "salt": self.salt, "status": self.status, "reason": self.reason}

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RolloutConfig":
        ch = d.get("challenger")
        return cls(champion=ModelSpec.from_dict(d["champion"]),
                   challenger=ModelSpec.from_dict(ch) if ch else None, mode=d.get("mode"),
                   share=float(d.get("share") or 0.0), guardrails=Guardrails.from_dict(d.get("guardrails")),
                   revision=int(d.get("revision", 0)), salt=str(d.get("salt", "freshrec")),
                   status=str(d.get("status", "stable")), reason=str(d.get("reason", "")))

    @classmethod
    def from_json(cls, raw: bytes | str) -> "RolloutConfig":
        return cls.from_dict(orjson.loads(raw)).validate()

    @classmethod
    def default(cls, settings: Settings) -> "RolloutConfig":
        """No rollout configured: the worker's ``FRESHREC_MODEL`` is the champion (version 1)."""
        return cls(champion=ModelSpec(settings.model, 1, settings.model))


def user_bucket(user_id: str, salt: str) -> int:
    """A stable bucket in ``[0, HASH_BUCKETS)`` for a user (same on every worker and restart)."""
    digest = hashlib.blake2b(f"{salt}|{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % HASH_BUCKETS


def arm_of(user_id: str, config: RolloutConfig) -> str:
    """``challenger`` for the configured share of users (by stable hash), else ``champion``."""
    if config.challenger is None or config.share <= 0.0:
        return CHAMPION
    return CHALLENGER if user_bucket(user_id, config.salt) < config.share * HASH_BUCKETS else CHAMPION
