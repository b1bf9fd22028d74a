"""Serving arms (champion, challenger), their online metrics, guardrails and automatic rollback.

:class:`Rollout` is what a worker knows of the current :class:`~freshrec.state.registry.RolloutConfig`:
one recommender per arm, the online metrics of each arm, and which users currently hold a list
from the challenger. The pipeline asks it which arm serves a user, tells it what was published
(or, for a shadow challenger, only scored) and feeds it every applied interaction; it answers
with guardrail breaches. Plain Python, no I/O: the worker moves configs and audit records.

Per-arm online metrics:

* **CTR**: every published list carries a ``request_id`` naming its arm and model
  (:func:`request_id`); frontends echo it on the impression and on clicks, so shown items and
  clicks are joined to the arm that produced the list, on any worker and after restarts, with no
  lookup table. CTR = clicks / shown items.
* **HitRate@10**: each arm's last top-10 per user (published or shadow) is tested against the
  user's next positive interaction (click, conversion, rating): the shadow arm's offline metric,
  comparable with the champion's on the same users.
* errors (exceptions while ranking; the champion's list is served instead) and freshness.

Guardrails (:class:`~freshrec.state.registry.Guardrails`) are checked after every flush; a breach
makes :meth:`Rollout.rollback` return the rolled-back config and the users to republish.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from freshrec.state.registry import CHALLENGER, CHAMPION, ModelSpec, RolloutConfig, arm_of

POSITIVE_TYPES = frozenset({"click", "conversion", "rating"})
LAST_LISTS_KEEP = 20_000  # users whose last top-10 per arm is kept for HitRate@10
HIT_K = 10
RID_SEP = "~"


def request_id(arm: str, label: str, generated_at: int, seq: int) -> str:
    """The id a published list carries, echoed by frontends on impressions and clicks."""
    return f"{arm}{RID_SEP}{label}{RID_SEP}{generated_at}{RID_SEP}{seq}"


def parse_request_id(rid: str | None) -> tuple[str, str] | None:
    """``(arm, model label)`` of a freshrec request id; None for any other id."""
    if not rid:
        return None
    parts = rid.split(RID_SEP)
    if len(parts) != 4 or parts[0] not in (CHAMPION, CHALLENGER):
        return None
    return parts[0], parts[1]


@dataclass
class ArmStats:
    """Online metrics of one arm since its model took the arm."""

    label: str
    lists: int = 0
    errors: int = 0
    impressions: int = 0
    clicks: int = 0
    hit_tests: int = 0
    hits: int = 0
    freshness_ms: deque = field(default_factory=lambda: deque(maxlen=5000))

    @property
    def ctr(self) -> float | None:
        return self.clicks / self.impressions if self.impressions else None

    @property
    def hitrate(self) -> float | None:
        return self.hits / self.hit_tests if self.hit_tests else None

    @property
    def error_rate(self) -> float | None:
        return self.errors / (self.lists + self.errors) if self.lists + self.errors else None

    def freshness_p99_ms(self) -> int | None:
        if not self.freshness_ms:
            return None
        f = sorted(self.freshness_ms)
        return f[min(len(f) - 1, int(0.99 * len(f)))]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.label, "lists": self.lists, "errors": self.errors,
                "impressions": self.impressions, "clicks": self.clicks, "ctr": self.ctr,
                "hit_tests": self.hit_tests, "hits": self.hits, "hitrate": self.hitrate,
                "freshness_p99_ms": self.freshness_p99_ms()}


def ctr_drop_z(champion: ArmStats, challenger: ArmStats) -> float:
    """One-sided two-proportion z statistic of champion CTR > challenger CTR."""
    n1, n2 = champion.impressions, challenger.impressions
    if not n1 or not n2:
        return 0.0
    p = (champion.clicks + challenger.clicks) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    return (champion.clicks / n1 - challenger.clicks / n2) / se if se > 0 else 0.0


Builder = Callable[[ModelSpec, Any], Any]  # (spec, recommender to warm-start from or None) -> recommender


class Rollout:
    """The arms one worker serves under a rollout config (see the module docstring)."""

    def __init__(self, config: RolloutConfig, build: Builder) -> None:
        self.build = build
        self.config = config
        self.recommenders: dict[str, Any] = {CHAMPION: build(config.champion, None)}
        self.stats: dict[str, ArmStats] = {CHAMPION: ArmStats(config.champion.label)}
        self.last_lists: dict[str, OrderedDict[str, frozenset]] = {CHAMPION: OrderedDict()}
        self.challenger_users: set[str] = set()  # users whose list in Redis came from the challenger
        if config.challenger is not None:
            self._start_challenger(config.challenger)

    # ------------------------------------------------------------------ arms
    @property
    def champion(self) -> Any:
        return self.recommenders[CHAMPION]

    @property
    def challenger(self) -> Any | None:
        return self.recommenders.get(CHALLENGER)

    @property
    def shadow(self) -> bool:
        return self.config.challenger is not None and self.config.mode == "shadow"

    def arm_of(self, user_id: str) -> str:
        return arm_of(user_id, self.config)

    def label(self, arm: str) -> str:
        return self.config.arms()[arm].label

    def learners(self) -> list[Any]:
        """Every recommender that must see every event (champion first)."""
        return list(self.recommenders.values())

    def _start_challenger(self, spec: ModelSpec) -> None:
        self.recommenders[CHALLENGER] = self.build(spec, self.champion)
        self.stats[CHALLENGER] = ArmStats(spec.label)
        self.last_lists[CHALLENGER] = OrderedDict()

    def restart_challenger(self) -> None:
        """Start the configured challenger afresh from the champion (after the champion's state
        was restored from a checkpoint); its metrics start over."""
        if self.config.challenger is not None:
            self._start_challenger(self.config.challenger)

    def _stop_challenger(self) -> None:
        for table in (self.recommenders, self.stats, self.last_lists):
            table.pop(CHALLENGER, None)

    # ------------------------------------------------------------------ observations
    def record_list(self, arm: str, user_id: str, scored: Sequence[tuple[str, float]] | None,
                    freshness_ms: int | None, served: bool) -> None:
        """A list computed by ``arm`` (``served``: written to Redis; else a shadow list;
        ``freshness_ms`` None for a list republished without a new event)."""
        st = self.stats[arm]
        if scored is None:
            st.errors += 1
            return
        st.lists += 1
        if freshness_ms is not None:
            st.freshness_ms.append(freshness_ms)
        lists = self.last_lists[arm]
        lists[user_id] = frozenset(item for item, _ in scored[:HIT_K])
        lists.move_to_end(user_id)
        while len(lists) > LAST_LISTS_KEEP:
            lists.popitem(last=False)
        if served:
            if arm == CHALLENGER:
                self.challenger_users.add(user_id)
            else:
                self.challenger_users.discard(user_id)

    def observe(self, event: dict) -> None:
        """An applied interaction: the request-id join (CTR) and next-interaction hit tests."""
        etype = event["type"]
        parsed = parse_request_id(event.get("request_id"))
        if parsed is not None:
            st = self.stats.get(parsed[0])
            if st is not None and st.label == parsed[1]:
                if etype == "impression":
                    st.impressions += len(event["item_ids"])
                elif etype == "click":
                    st.clicks += 1
        if etype in POSITIVE_TYPES:
            user, item = event["user_id"], event["item_id"]
            for arm, lists in self.last_lists.items():
                shown = lists.get(user)
                if shown is not None:
                    st = self.stats[arm]
                    st.hit_tests += 1
                    st.hits += item in shown

    def forget_user(self, user_id: str) -> None:
        for lists in self.last_lists.values():
            lists.pop(user_id, None)
        self.challenger_users.discard(user_id)

    # ------------------------------------------------------------------ guardrails
    def check(self) -> str | None:
        """The reason the challenger breaches a guardrail, or None (see :class:`Guardrails`)."""
        if self.config.challenger is None:
            return None
        g = self.config.guardrails
        ch, champ = self.stats[CHALLENGER], self.stats[CHAMPION]
        if ch.lists + ch.errors >= g.min_lists and (ch.error_rate or 0.0) > g.max_error_rate:
            return f"error rate {ch.error_rate:.3f} > {g.max_error_rate} over {ch.lists + ch.errors} lists"
        p99 = ch.freshness_p99_ms()
        if ch.lists >= g.min_lists and p99 is not None and p99 > g.max_freshness_p99_s * 1000:
            return f"freshness p99 {p99 / 1000:.1f}s > {g.max_freshness_p99_s}s over {ch.lists} lists"
        if (not self.shadow and ch.impressions >= g.min_impressions and champ.impressions >= g.min_impressions
                and champ.ctr):
            z = ctr_drop_z(champ, ch)
            if ch.ctr < (1.0 - g.max_ctr_drop) * champ.ctr and z >= g.min_z:
                return (f"CTR {ch.ctr:.4f} < (1 - {g.max_ctr_drop}) x champion {champ.ctr:.4f} "
                        f"(z {z:.1f}, {ch.impressions} vs {champ.impressions} shown items)")
        return None

    # ------------------------------------------------------------------ changes
    def apply(self, config: RolloutConfig, users: Iterable[str], force: bool = False) -> set[str]:
        """Switch to ``config`` (live; an older revision only with ``force``); returns the users
        whose served arm or model changed and need a list again. ``users``: every user with state
        (scanned on share/mode changes)."""
        old = self.config
        if config.revision <= old.revision and not force:
            return set()
        old_labels = {arm: spec.label for arm, spec in old.arms().items()}
        self.config = config
        republish: set[str] = set()
        if config.champion.label != old.champion.label:
            if old.challenger is not None and config.champion.label == old.challenger.label:
                promoted = self.recommenders[CHALLENGER]  # it has learned alongside: no cold start
            else:
                promoted = self.build(config.champion, self.champion)
            self._stop_challenger()
            self.recommenders[CHAMPION] = promoted
            self.stats[CHAMPION] = ArmStats(config.champion.label)
            self.last_lists[CHAMPION] = OrderedDict()
            republish.update(users)  # every list now comes from another model
            self.challenger_users.clear()
        new_ch = config.challenger.label if config.challenger else None
        if new_ch != old_labels.get(CHALLENGER) or (new_ch and CHALLENGER not in self.recommenders):
            self._stop_challenger()
            if config.challenger is not None:
                self._start_challenger(config.challenger)
        if config.challenger is None or config.mode == "shadow":
            republish.update(self.challenger_users)  # back to the champion
            self.challenger_users.clear()
        elif (config.share, config.salt, config.mode, new_ch) != (old.share, old.salt, old.mode,
                                                                  old_labels.get(CHALLENGER)):
            republish.update(u for u in users if (self.arm_of(u) == CHALLENGER) != (u in self.challenger_users))
        return republish

    def rollback(self, reason: str) -> tuple[RolloutConfig, set[str]]:
        """Drop the challenger: the new config and the users to republish from the champion."""
        config = self.config.with_changes(challenger=None, mode=None, share=0.0, status="rolled_back",
                                          reason=reason)
        users = set(self.challenger_users)
        self.config = config
        self._stop_challenger()
        self.challenger_users.clear()
        return config, users

    def snapshot(self) -> dict[str, Any]:
        """Config and per-arm metrics, for /metrics, the stats document and ``freshrec status``."""
        c = self.config
        arms = {}
        for arm, spec in c.arms().items():
            d = self.stats[arm].to_dict() if arm in self.stats else {"model": spec.label}
            online = getattr(self.recommenders.get(arm), "click_metrics", None)  # learning models only
            if online is not None:
                d.update(online.snapshot())
            d["share"] = (c.share if arm == CHALLENGER else 1.0 - (0.0 if c.mode == "shadow" else c.share))
            d["mode"] = c.mode if arm == CHALLENGER else "serve"
            arms[arm] = d
        return {"revision": c.revision, "status": c.status, "reason": c.reason, "arms": arms}
