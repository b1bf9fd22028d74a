"""``freshrec eval``: prequential evaluation of freshrec against baselines on a data set."""

from __future__ import annotations

import math
import os
import platform
import time
from importlib import metadata
from pathlib import Path

import click

from freshrec.streams.datasets import SPEC_HELP

# The same as methods.DEFAULT_METHODS (a test checks); spelled out so `freshrec --help` stays light.
DEFAULT_METHODS = ("freshrec", "popularity", "covis20", "funkmf", "rtrec")

# Without --sample-every, test every N-th positive so that about this many tests are run. On
# MovieLens 100K (100k positives) that is every 4th: freshrec, popularity, covis20 and funkmf
# then take ~2.5 min in one process (every positive: ~5 min). rtrec's batch fitting alone takes
# ~5.5 min there whatever the sampling (it runs in the second process), so the default run takes
# ~6.5 min on a shared 2-core machine; without rtrec it takes under 3. Smaller data sets (the
# MIND sample, tests) are tested on every positive.
AUTO_MAX_TESTS = 25_000


# Half-life of the `popularity` baseline per data set kind, from a sweep over 10 min .. 30 days
# and no decay (HitRate@10): MovieLens 100K is best at 30 days (0.078; 1 day: 0.061), the MIND
# sample at 1 hour (0.348; 1 day: 0.174). A tuned baseline is the fair comparison; other kinds
# keep the worker's default of 1 day.
POPULARITY_HALF_LIFE_S = {"movielens": 30 * 86400, "ml": 30 * 86400, "mind": 3600, "mind+history": 3600}
# freshrec's own (item popularity and trending), where the kind's time scale is far from the
# worker's default day, as an operator of a news site would set FRESHREC_HALF_LIFE_S: on the MIND
# sample 1 hour gives HitRate@10 0.213 against 0.141. MovieLens 100K keeps the day: 30 days gave
# 0.2016 against 0.2009 (noise) and coverage 0.78 against 0.85.
FRESHREC_HALF_LIFE_S = {"mind": 3600, "mind+history": 3600}


def default_specs(dataset: str, has_impressions: bool) -> list[str]:
    """The methods run when --methods is not given (half-lives per data set kind, see above)."""
    kind = dataset.partition(":")[0].strip().lower()
    tuned = {"popularity": POPULARITY_HALF_LIFE_S, "freshrec": FRESHREC_HALF_LIFE_S}
    specs = []
    for name in DEFAULT_METHODS:
        if kind in tuned.get(name, {}):
            name = f"{name}:half_life_s={tuned[name][kind]}"
        specs.append(name)
    if has_impressions:
        specs.append("item-ctr")
    return specs


def auto_sample_every(testable: int, max_tests: int = AUTO_MAX_TESTS) -> int:
    """The default sampling: every positive up to ``max_tests``, then every N-th."""
    return max(1, math.ceil(testable / max_tests))


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("freshrec", "river", "rtrec", "numpy", "scikit-learn"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


@click.command("eval")
@click.option("--dataset", required=True, help=f"What to evaluate on: {SPEC_HELP}.")
@click.option("--methods", "methods_text", default=None,
              help="Comma-separated methods, each NAME[:key=value,...] "
                   f"(default {','.join(DEFAULT_METHODS)}, popularity's half-life tuned per data set kind, "
                   "freshrec's 1 h on MIND, "
                   "plus item-ctr on data with impressions). "
                   "Known: freshrec, popularity, covis20, funkmf, rtrec, item-ctr. "
                   "Example: popularity:half_life_s=3600,funkmf:lr=0.02.")
@click.option("--k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="List length.")
@click.option("--sample-every", type=click.IntRange(min=1), default=None,
              help=f"Test every N-th positive (all events are always learned). Default: 1, or enough to "
                   f"keep about {AUTO_MAX_TESTS} tests.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Use only the first N interaction events (catalogue events always come first).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output directory for results.md, results.json, hitrate.png "
                   "(default eval-results/KIND-TIMESTAMP, git-ignored).")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Processes to spread the methods over (default: 2 when there are 2+ cores). Same numbers "
                   "either way; methods never share state.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar on stderr.")
def eval_command(dataset: str, methods_text: str | None, k: int, sample_every: int | None, limit: int | None,
                 out_dir: Path | None, jobs: int | None, progress: bool) -> None:
    """Prequential (test-then-train) evaluation of freshrec and baselines on DATASET.

    Replays the data set in event-time order. For each positive engagement (click, conversion,
    rating) each method first recommends K items for the user, excluding the items the user
    already engaged with, and the rank of the engaged item is recorded; then every method learns
    the event. Impressions and dismissals are only learned, and on impression data (MIND) each
    shown item is also scored for click prediction (AUC, logloss) before the slate is learned.

    Prints the results table and writes results.md, results.json and hitrate.png to --out.
    """
    from freshrec.evaluation.methods import MethodError, method_label, parse_method_specs, split_spec
    from freshrec.evaluation.prequential import evaluate_parallel, limit_interactions, scan_stream
    from freshrec.evaluation.report import markdown_report, write_report
    from freshrec.settings import load_settings
    from freshrec.streams.datasets import load_dataset

    t0 = time.perf_counter()
    try:
        data = load_dataset(dataset)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    scan = scan_stream(limit_interactions(data, limit))
    if not scan.interactions:
        raise click.ClickException(f"{dataset}: no interaction events")

    try:
        specs = parse_method_specs(methods_text) if methods_text else default_specs(dataset, bool(scan.impressions))
        labels = [method_label(s) for s in specs]
        for s in specs:
            split_spec(s)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--methods") from None
    if len(set(labels)) != len(labels):
        raise click.BadParameter(f"methods listed twice: {labels}", param_hint="--methods")

    if sample_every is None:
        sample_every = auto_sample_every(scan.positives)
        how = (f"auto: {scan.positives} positives, at most ~{AUTO_MAX_TESTS} tests; "
               "--sample-every 1 tests them all")
    else:
        how = "given"
    if jobs is None:
        jobs = 2 if (os.cpu_count() or 1) >= 2 else 1
    jobs = min(jobs, len(specs))
    if out_dir is None:
        kind = dataset.partition(":")[0].strip().lower().replace("+", "-") or "data"
        out_dir = Path("eval-results") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"

    click.echo(f"dataset {dataset}: {scan.catalogue} catalogue + {scan.interactions} interaction events, "
               f"{scan.positives} positives, {scan.impressions} impressions", err=True)
    click.echo(f"methods: {', '.join(labels)}; k={k}; sample-every {sample_every} ({how}); "
               f"{jobs} process(es)", err=True)

    settings = load_settings()
    try:
        result = evaluate_parallel(dataset if jobs > 1 else data, specs, jobs, k=k, sample_every=sample_every,
                                   limit=limit, progress=progress, settings=settings)
    except MethodError as exc:
        raise click.ClickException(str(exc)) from None
    wall = time.perf_counter() - t0
    meta = {
        "dataset": dataset, "limit": limit, "methods_requested": specs, "sample_every_source": how,
        "jobs": jobs, "wall_s": wall, "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "versions": _versions(),
    }
    summary = write_report(result, out_dir, meta)
    click.echo(markdown_report(summary))
    click.echo(f"wrote {out_dir / 'results.md'}, {out_dir / 'results.json'}, {out_dir / 'hitrate.png'} "
               f"({wall:.1f}s)", err=True)
