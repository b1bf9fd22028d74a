"""Where the registry and the rollout config live: Redis (``{p}:models``, ``{p}:rollout``).

Workers read the rollout config about once a second and apply a newer ``revision`` live; the CLI
and a worker rolling back write it with compare-and-set on the revision (``WATCH``), so two
changes made at the same moment cannot silently overwrite each other.
"""

from __future__ import annotations

from typing import Any

import orjson
import redis

from freshrec.settings import Settings
from freshrec.state.publisher import RedisKeys
from freshrec.state.registry import ModelSpec, RegistryError, RolloutConfig


class RolloutStore:
    """Model specs and the rollout config in Redis (``client``: a blocking ``redis.Redis``)."""

    def __init__(self, client: Any, keys: RedisKeys) -> None:
        self.client = client
        self.keys = keys

    @classmethod
    def connect(cls, settings: Settings, timeout_s: float = 5.0) -> "RolloutStore":
        return cls(redis.Redis.from_url(settings.redis_url, socket_timeout=timeout_s), RedisKeys(settings.redis_prefix))

    # ------------------------------------------------------------------ rollout config
    def load(self, settings: Settings) -> RolloutConfig:
        """The stored config, or the default (``FRESHREC_MODEL`` as champion) when none is stored."""
        raw = self.client.get(self.keys.rollout())
        return RolloutConfig.default(settings) if raw is None else RolloutConfig.from_json(raw)

    def save(self, config: RolloutConfig, expect_revision: int) -> bool:
        """Store ``config`` if the stored revision is still ``expect_revision`` (0: none stored);
        False when someone else changed it first (reload and retry)."""
        key = self.keys.rollout()
        with self.client.pipeline() as pipe:
            try:
                pipe.watch(key)
                raw = pipe.get(key)
                current = RolloutConfig.from_json(raw).revision if raw is not None else 0
                if current != expect_revision:
                    pipe.unwatch()
                    return False
                pipe.multi()
                pipe.set(key, config.validate().to_json())
                pipe.execute()
                return True
            except redis.WatchError:
                return False

    # ------------------------------------------------------------------ registry
    def register(self, name: str, kind: str, params: dict[str, Any]) -> ModelSpec:
        """Register the next version of model ``name`` (versions are never overwritten)."""
        for _ in range(10):
            version = max((s.version for s in self.specs() if s.name == name), default=0) + 1
            spec = ModelSpec(name, version, kind, params).validate()
            if self.client.hsetnx(self.keys.models(), spec.label, orjson.dumps(spec.to_dict())):
                return spec
        raise RegistryError(f"could not register {name}: concurrent registrations")

    def specs(self) -> list[ModelSpec]:
        raw = self.client.hgetall(self.keys.models())
        specs = [ModelSpec.from_dict(orjson.loads(v)) for v in raw.values()]
        return sorted(specs, key=lambda s: (s.name, s.version))

    def spec(self, ref: str) -> ModelSpec:
        """``name`` (its newest version) or ``name-vN``; a clear error when unknown."""
        specs = self.specs()
        exact = [s for s in specs if s.label == ref]
        if exact:
            return exact[0]
        named = [s for s in specs if s.name == ref]
        if named:
            return named[-1]
        known = ", ".join(s.label for s in specs) or "none (freshrec model register NAME --kind ...)"
        raise RegistryError(f"no registered model {ref!r}; registered: {known}")
