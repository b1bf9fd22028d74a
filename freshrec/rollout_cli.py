"""``freshrec model`` and ``freshrec rollout``: register models, run a challenger, promote, roll back.

Every change is written to Redis with compare-and-set on the revision (workers pick it up within
about a second, without a restart) and to the audit topic.
"""

from __future__ import annotations

import getpass
from typing import Any, Callable

import click
import orjson

from freshrec.settings import Settings, load_settings
from freshrec.state.registry import (KINDS, MODES, Guardrails, RegistryError, RolloutConfig, parse_params)


def _store(settings: Settings):  # noqa: ANN202
    from freshrec.state.rollout_store import RolloutStore

    return RolloutStore.connect(settings)


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # noqa: BLE001 - no login name in some containers
        return "cli"


def _change(action: str, make: Callable[[RolloutConfig], RolloutConfig], **audit: Any) -> RolloutConfig:
    """Apply ``make`` to the stored config (retried on a concurrent change), audit, print it."""
    from freshrec.streams.audit import audit_record, send_audit
    from freshrec.streams.topics import ensure_topics

    settings = load_settings()
    store = _store(settings)
    try:
        for _ in range(5):
            current = store.load(settings)
            new = make(current)
            if store.save(new, current.revision):
                break
        else:
            raise click.ClickException("the rollout config kept changing under this command; try again")
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    ensure_topics(settings)
    send_audit(settings, [audit_record(action, _actor(), revision=new.revision, champion=new.champion.label,
                                       challenger=new.challenger.label if new.challenger else None,
                                       mode=new.mode, share=new.share, previous=current.to_dict(), **audit)])
    click.echo(f"{action}: revision {new.revision} (workers apply it within about a second)")
    click.echo(_describe(new))
    return new


def _describe(c: RolloutConfig) -> str:
    lines = [f"champion   {c.champion.label:<24} kind={c.champion.kind} params={orjson.dumps(c.champion.params).decode()}"]
    if c.challenger is not None:
        lines.append(f"challenger {c.challenger.label:<24} kind={c.challenger.kind} "
                     f"params={orjson.dumps(c.challenger.params).decode()} mode={c.mode} share={c.share:.0%}")
    else:
        lines.append("challenger none")
    lines.append(f"status {c.status}{': ' + c.reason if c.reason else ''}; revision {c.revision}")
    return "\n".join(lines)


@click.group("model")
def model_group() -> None:
    """The model registry: named, versioned model configurations."""


@model_group.command("register")
@click.argument("name")
@click.option("--kind", type=click.Choice(KINDS), default="learning", show_default=True,
              help="learning: the two-stage learning recommender; covis: the counting baseline; "
                   "random: random items (a deliberately bad model, to rehearse a rollback).")
@click.option("--set", "params", multiple=True, metavar="KEY=VALUE",
              help="Override a model setting, e.g. --set explore_share=0.2 (repeatable).")
def register(name: str, kind: str, params: tuple[str, ...]) -> None:
    """Register the next version of model NAME (existing versions never change)."""
    from freshrec.streams.audit import audit_record, send_audit
    from freshrec.streams.topics import ensure_topics

    settings = load_settings()
    try:
        spec = _store(settings).register(name, kind, parse_params(list(params)))
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    ensure_topics(settings)
    send_audit(settings, [audit_record("register", _actor(), model=spec.to_dict())])
    click.echo(f"registered {spec.label} (kind {spec.kind}, params {orjson.dumps(spec.params).decode()})")


@model_group.command("list")
def list_models() -> None:
    """The registered models."""
    specs = _store(load_settings()).specs()
    if not specs:
        click.echo("no models registered (freshrec model register NAME --kind ...)")
    for s in specs:
        click.echo(f"{s.label:<24} kind={s.kind} params={orjson.dumps(s.params).decode()}")


@click.group("rollout")
def rollout_group() -> None:
    """Run a challenger beside the champion, promote it or roll it back, live.

    \b
    freshrec model register ranker2 --set explore_share=0.2
    freshrec rollout start ranker2 --mode canary --share 0.2   # 20% of users (stable hash)
    freshrec rollout share 0.5                                 # widen it
    freshrec rollout promote                                   # challenger becomes champion
    freshrec rollout rollback --reason "..."                   # or drop it
    Guardrails roll a canary/A-B challenger back automatically (CTR drop, errors, freshness).
    """


@rollout_group.command("show")
@click.option("--json", "as_json", is_flag=True)
def show(as_json: bool) -> None:
    """The current rollout config."""
    c = _store(load_settings()).load(load_settings())
    click.echo(orjson.dumps(c.to_dict(), option=orjson.OPT_INDENT_2).decode() if as_json else _describe(c))


@rollout_group.command("start")
@click.argument("model")
@click.option("--mode", type=click.Choice(MODES), default="canary", show_default=True,
              help="shadow: scored and reported, never served; canary / ab: serves its share of users.")
@click.option("--share", type=float, default=0.1, show_default=True, help="Share of users in the challenger arm.")
@click.option("--min-impressions", type=int, default=Guardrails.min_impressions, show_default=True,
              help="Shown items per arm before the CTR guardrail is evaluated.")
@click.option("--max-ctr-drop", type=float, default=Guardrails.max_ctr_drop, show_default=True,
              help="Roll back when the challenger's CTR is this much (relative) below the champion's.")
@click.option("--max-error-rate", type=float, default=Guardrails.max_error_rate, show_default=True)
@click.option("--max-freshness-p99-s", type=float, default=Guardrails.max_freshness_p99_s, show_default=True)
@click.option("--min-lists", type=int, default=Guardrails.min_lists, show_default=True,
              help="Challenger lists before the error and freshness guardrails are evaluated.")
def start(model: str, mode: str, share: float, min_impressions: int, max_ctr_drop: float,
          max_error_rate: float, max_freshness_p99_s: float, min_lists: int) -> None:
    """Run registered MODEL (name or name-vN) as the challenger."""
    settings = load_settings()
    try:
        spec = _store(settings).spec(model)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    g = Guardrails(min_impressions=min_impressions, max_ctr_drop=max_ctr_drop, max_error_rate=max_error_rate,
                   max_freshness_p99_s=max_freshness_p99_s, min_lists=min_lists)
    _change(mode, lambda c: c.with_changes(challenger=spec, mode=mode, share=share, guardrails=g,
                                            status="running", reason=f"{mode} {spec.label} at {share:.0%}"))


@rollout_group.command("share")
@click.argument("share", type=float)
def set_share(share: float) -> None:
    """Change the challenger's share of users (users move arms by stable hash)."""
    def make(c: RolloutConfig) -> RolloutConfig:
        if c.challenger is None:
            raise RegistryError("no challenger is running (freshrec rollout start MODEL)")
        return c.with_changes(share=share, reason=f"share {c.share:.0%} -> {share:.0%}")
    _change("share", make)


@rollout_group.command("promote")
def promote() -> None:
    """The challenger becomes the champion and serves everyone (it keeps what it learned)."""
    def make(c: RolloutConfig) -> RolloutConfig:
        if c.challenger is None:
            raise RegistryError("no challenger to promote")
        return c.with_changes(champion=c.challenger, challenger=None, mode=None, share=0.0, status="promoted",
                              reason=f"{c.challenger.label} promoted over {c.champion.label}")
    _change("promote", make)


@rollout_group.command("rollback")
@click.option("--reason", default="manual rollback", show_default=True)
def rollback(reason: str) -> None:
    """Drop the challenger: its users get champion lists again."""
    def make(c: RolloutConfig) -> RolloutConfig:
        if c.challenger is None:
            raise RegistryError("no challenger to roll back")
        return c.with_changes(challenger=None, mode=None, share=0.0, status="rolled_back", reason=reason)
    _change("rollback", make, reason=reason)


@rollout_group.command("history")
@click.option("-n", "limit", default=20, show_default=True, help="Newest records to show.")
def history(limit: int) -> None:
    """The audit trail (topic {prefix}.audit), oldest first."""
    import datetime

    from freshrec.streams.audit import read_audit

    for rec in read_audit(load_settings())[-limit:]:
        when = datetime.datetime.fromtimestamp(rec["ts"] / 1000, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        rest = {k: v for k, v in rec.items() if k not in ("ts", "action", "actor", "previous", "arms")}
        click.echo(f"{when}Z {rec['action']:<9} {rec['actor']:<16} {orjson.dumps(rest).decode()}")
