"""``freshrec dev ...``: run the local Kafka + Redis stack without Docker."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from freshrec.localinfra._proc import LocalInfraError

if TYPE_CHECKING:
    from freshrec.localinfra.stack import DevStack

_HOME_HELP = ("Where the stack keeps its data, logs and services.json "
              "[default: $FRESHREC_HOME/dev, i.e. .freshrec/dev].")


def _stack(home: Path | None) -> "DevStack":
    """The stack (imported lazily: keeps `--help` fast)."""
    from freshrec.localinfra.stack import DevStack

    return DevStack(home)


def _fail(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def dev() -> None:
    """Local Kafka (KRaft, single node) and redis-server, no Docker needed.

    \b
    Needs Java 17+ and redis-server; Kafka's jars are downloaded once from Maven
    Central with `mvn` into ~/.cache/freshrec (see `freshrec dev fetch`).
    Both services listen on free 127.0.0.1 ports; `dev up` writes their addresses to
    .freshrec/dev/services.json, which every freshrec command reads when
    FRESHREC_KAFKA_BROKERS / FRESHREC_REDIS_URL are not set.

    \b
      freshrec dev up        # start (or keep) both services
      freshrec dev status    # running / answering?
      freshrec dev down      # stop them (Kafka data is kept)
    """


@dev.command()
@click.option("--home", type=click.Path(path_type=Path), default=None, help=_HOME_HELP)
@click.option("--timeout", type=float, default=90, show_default=True,
              help="Seconds to wait for Kafka to answer.")
@click.option("--json", "as_json", is_flag=True, help="Print the services JSON.")
def up(home: Path | None, timeout: float, as_json: bool) -> None:
    """Start Kafka and Redis (idempotent: running services are kept).

    Returns when Kafka answers metadata requests and Redis answers PING. The servers run
    detached; stop them with `freshrec dev down`. Restarts reuse the same ports and data.
    """
    stack = _stack(home)
    try:
        info = stack.up(timeout=timeout)
    except LocalInfraError as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"kafka  {info['kafka_brokers']}  "
               f"(pid {info['kafka_pid']}, log {info['kafka_log']})")
    click.echo(f"redis  {info['redis_url']}  (pid {info['redis_pid']}, log {info['redis_log']})")
    click.echo(f"addresses written to {stack.services_file}")


@dev.command()
@click.option("--home", type=click.Path(path_type=Path), default=None, help=_HOME_HELP)
@click.option("--purge", is_flag=True, help="Also delete the stack's data (Kafka topics, logs).")
def down(home: Path | None, purge: bool) -> None:
    """Stop Kafka and Redis started by `dev up` and remove services.json.

    Kafka's topics are kept for the next `dev up` unless --purge; Redis keeps nothing.
    """
    stack = _stack(home)
    try:
        stopped = stack.down(purge=purge)
    except LocalInfraError as exc:
        _fail(exc)
        return
    for name, was_running in stopped.items():
        click.echo(f"{name:6} {'stopped' if was_running else 'was not running'}")
    if purge:
        click.echo(f"deleted {stack.home}")


@dev.command()
@click.option("--home", type=click.Path(path_type=Path), default=None, help=_HOME_HELP)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(home: Path | None, as_json: bool) -> None:
    """Show whether Kafka and Redis are running and answering.

    Exit status 0 when both answer, 1 otherwise (handy in scripts).
    """
    info = _stack(home).status()
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        for name, address_key in (("kafka", "bootstrap"), ("redis", "url")):
            svc = info[name]
            state = ("answering" if svc["answering"] else
                     "running, NOT answering" if svc["running"] else "stopped")
            where = f"  {svc[address_key]}" if svc[address_key] else ""
            pid = f"  pid {svc['pid']}" if svc["pid"] else ""
            click.echo(f"{name:6} {state}{where}{pid}")
    sys.exit(0 if info["kafka"]["answering"] and info["redis"]["answering"] else 1)


@dev.command()
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Download cache [default: $FRESHREC_CACHE_DIR or ~/.cache/freshrec].")
def fetch(cache_dir: Path | None) -> None:
    """Download Kafka's jars (once, ~46 MB from Maven Central via mvn); nothing is started.

    Run at set-up time so later `dev up` and test runs work offline.
    """
    from freshrec.localinfra.kafka import KAFKA_VERSION, fetch_kafka

    try:
        libs = fetch_kafka(cache_dir)
    except LocalInfraError as exc:
        _fail(exc)
        return
    click.echo(f"kafka {KAFKA_VERSION} jars in {libs}")
