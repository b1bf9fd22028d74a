"""Turn a :class:`PrequentialResult` into numbers, a markdown table, JSON and a HitRate plot."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from freshrec.evaluation import metrics as mx
from freshrec.evaluation.prequential import MethodResult, PrequentialResult

__all__ = ["summarize_method", "summarize", "markdown_report", "results_table", "click_table",
           "plot_hitrate", "write_report"]


def _mean(total: float, n: int) -> float | None:
    return total / n if n else None


def summarize_method(m: MethodResult, result: PrequentialResult) -> dict[str, Any]:
    """One method's metrics (None where undefined, e.g. no tests or cannot score)."""
    k = result.k
    ranks = np.asarray(m.ranks, dtype=np.int64)
    cold = np.asarray(result.test_cold, dtype=bool)
    out: dict[str, Any] = {
        "method": m.name,
        f"hit_rate@{k}": mx.hit_rate(ranks, k) if ranks.size else None,
        f"ndcg@{k}": mx.ndcg(ranks, k) if ranks.size else None,
        f"mrr@{k}": mx.mrr(ranks, k) if ranks.size else None,
        "coverage": mx.catalogue_coverage(m.recommended, result.stream.items_seen),
        "ild": _mean(m.ild_sum, m.ild_n),
        "novelty": _mean(m.novelty_sum, m.novelty_n),
        "tests": int(ranks.size),
        "seconds": m.seconds,
        "learn_s": m.learn_s,
        "recommend_s": m.recommend_s,
        "score_s": m.score_s,
        f"hit_rate@{k}_cold": mx.hit_rate(ranks[cold], k) if cold.any() else None,
        f"hit_rate@{k}_warm": mx.hit_rate(ranks[~cold], k) if (~cold).any() else None,
        "cold_tests": int(cold.sum()),
        "violations": m.violations,
        "params": m.params,
        "stats": m.extra,
    }
    if m.can_score and m.click_labels:
        y = np.asarray(m.click_labels)
        s = np.asarray(m.click_scores)
        out.update({
            "auc": mx.auc(y, s),
            "gauc": _mean(m.gauc_sum, m.gauc_n),
            "gauc_impressions": m.gauc_n,
            "logloss": mx.log_loss(y, s) if m.probabilistic else None,
            "click_pairs": int(y.size),
            "clicks": int(y.sum()),
        })
    return out


def summarize(result: PrequentialResult, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole run as a JSON-ready dict."""
    st = result.stream
    return {
        **(meta or {}),
        "k": result.k,
        "sample_every": result.sample_every,
        "stream": {
            "events": st.events, "catalogue_events": st.catalogue_events, "interactions": st.interactions,
            "positives": st.positives, "repeats": st.repeats, "testable": st.testable, "tests": st.tests,
            "cold_tests": st.cold_tests, "impressions": st.impressions,
            "impressions_scored": st.impressions_scored, "users": st.users, "items_seen": st.items_seen,
            "first_ts": st.first_ts, "last_ts": st.last_ts,
        },
        "loop_wall_s": result.wall_s,
        "methods": [summarize_method(m, result) for m in result.methods],
    }


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def results_table(summary: dict[str, Any]) -> str:
    """The main markdown table: one row per method."""
    k = summary["k"]
    head = (f"| method | HitRate@{k} | NDCG@{k} | MRR@{k} | coverage | ILD | novelty | tests | seconds |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = [
        f"| {m['method']} | {_fmt(m[f'hit_rate@{k}'])} | {_fmt(m[f'ndcg@{k}'])} | {_fmt(m[f'mrr@{k}'])} | "
        f"{_fmt(m['coverage'], 3)} | {_fmt(m['ild'], 3)} | {_fmt(m['novelty'], 2)} | {m['tests']} | "
        f"{m['seconds']:.1f} |"
        for m in summary["methods"]
    ]
    return "\n".join([head, *rows])


def click_table(summary: dict[str, Any]) -> str | None:
    """Click prediction per impression (only when impressions were scored)."""
    rows = [m for m in summary["methods"] if "auc" in m]
    if not rows:
        return None
    head = ("| method | AUC | gAUC | logloss | shown items | clicks | score seconds |\n"
            "|---|---:|---:|---:|---:|---:|---:|")
    body = [f"| {m['method']} | {_fmt(m['auc'])} | {_fmt(m['gauc'])} | {_fmt(m['logloss'])} | "
            f"{m['click_pairs']} | {m['clicks']} | {m['score_s']:.1f} |" for m in rows]
    return "\n".join([head, *body])


def _date(ms: int | None) -> str:
    if ms is None:
        return "?"
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


def markdown_report(summary: dict[str, Any]) -> str:
    """results.md: what was run, the tables, the method parameters and the protocol."""
    st = summary["stream"]
    k = summary["k"]
    lines = [
        f"# freshrec eval: `{summary.get('dataset', '?')}`",
        "",
        f"Prequential (test-then-train), top-{k}, items the user already engaged with excluded. "
        f"{st['interactions']} interactions ({st['positives']} positive engagements, {st['repeats']} repeats "
        f"not tested) + {st['catalogue_events']} catalogue events, {st['users']} users, {st['items_seen']} "
        f"items, {_date(st['first_ts'])} to {_date(st['last_ts'])} UTC. "
        f"Tested every {summary['sample_every']} positive(s): {st['tests']} tests, "
        f"{st['cold_tests']} of them cold-start (user without history).",
        "",
        results_table(summary),
        "",
    ]
    ct = click_table(summary)
    if ct:
        lines += [f"Click prediction on {st['impressions_scored']} impressions (each shown item scored before "
                  "the slate is learned; label = clicked in that impression). AUC pools all shown items, "
                  "gAUC averages per-impression AUC over impressions with clicks and non-clicks; logloss only "
                  "for methods whose scores are probabilities.", "", ct, ""]
    cold_rows = [m for m in summary["methods"] if m.get(f"hit_rate@{k}_cold") is not None]
    if cold_rows:
        lines += [f"HitRate@{k} cold / warm: " + ", ".join(
            f"{m['method']} {_fmt(m[f'hit_rate@{k}_cold'], 3)} / {_fmt(m[f'hit_rate@{k}_warm'], 3)}"
            for m in cold_rows) + ".", ""]
    lines += ["Methods and parameters:", ""]
    for m in summary["methods"]:
        params = m.get("params") or {}
        lines.append(f"- `{m['method']}`: " + (", ".join(f"{key}={v}" for key, v in params.items()) or "defaults")
                     + f" (learn {m['learn_s']:.1f}s, recommend {m['recommend_s']:.1f}s)")
    lines += [
        "",
        "Columns: HitRate = share of tests whose item is in the top k (= Recall@k with one held-out "
        "item); NDCG = 1/log2(rank+1); MRR = 1/rank within the top k (0 if absent); coverage = distinct "
        "items ever recommended / items seen in the stream; ILD = 1 - mean pairwise Jaccard of item "
        "categories (items without categories skipped); novelty = mean -log2 of the items' smoothed share "
        "of engagements at recommendation time; seconds = the method's own learn + recommend + score time "
        "(wall-clock on a shared machine, so noisy).",
        "",
        f"Total wall time {summary.get('wall_s', summary['loop_wall_s']):.1f}s"
        + (f" with {summary['jobs']} process(es)" if summary.get("jobs") else "") + ".",
        "",
    ]
    return "\n".join(lines)


def plot_hitrate(result: PrequentialResult, path: str | Path, window: int | None = None) -> int:
    """PNG of each method's rolling HitRate@k over stream time; returns the window used."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(result.test_ts)
    if window is None:
        window = max(20, min(2000, n // 20))
    window = max(1, min(window, n))
    start = window - 1  # plot full windows only (no noisy first points)
    fig = Figure(figsize=(10, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if n:
        times = [dt.datetime.fromtimestamp(t / 1000, tz=dt.timezone.utc) for t in result.test_ts[start:]]
        for m in result.methods:
            ranks = np.asarray(m.ranks)
            hits = ((ranks >= 1) & (ranks <= result.k)).astype(float)
            ax.plot(times, mx.rolling_mean(hits, window)[start:], label=m.name, linewidth=1.3)
        ax.legend(loc="best", fontsize=9)
    else:
        ax.text(0.5, 0.5, "no tests", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(f"Prequential HitRate@{result.k}: mean of the last {window} tests")
    ax.set_xlabel("event time (UTC)")
    ax.set_ylabel(f"HitRate@{result.k}")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(str(path))
    return window


def write_report(result: PrequentialResult, out_dir: str | Path, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write results.md, results.json and hitrate.png to ``out_dir``; returns the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    window = plot_hitrate(result, out / "hitrate.png")
    summary = summarize(result, {**(meta or {}), "plot_window_tests": window})
    (out / "results.md").write_text(markdown_report(summary), encoding="utf-8")
    (out / "results.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY,
                                                    default=str))
    return summary
