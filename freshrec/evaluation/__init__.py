"""Offline evaluation of freshrec against baselines and a peer library: ``freshrec eval``.

Usage::

    freshrec eval --dataset movielens:../shared/datasets/movielens-100k
    freshrec eval --dataset mind:../shared/datasets/mind-sample --methods freshrec,popularity:half_life_s=3600
    freshrec eval --dataset synthetic:users=50,items=100,events=2000 --sample-every 1 --out /tmp/ev

Protocol (:mod:`~freshrec.evaluation.prequential`): prequential, test-then-train, in event-time
order. Each positive engagement (click, conversion, rating) on an item new to the user is first
a test (each method's top-k for the user, the user's earlier items excluded; rank recorded),
then every method learns the event. Every event is learned; ``--sample-every N`` only thins
the tests. On impression data (MIND) each shown item is also scored before the slate is
learned, for click-prediction AUC and logloss.

Modules: :mod:`~freshrec.evaluation.methods` (the method protocol ``learn_one`` /
``recommend_one`` / ``score_one`` and the compared methods), :mod:`~freshrec.evaluation.metrics`
(pure metric functions), :mod:`~freshrec.evaluation.report` (markdown, JSON, PNG) and
:mod:`~freshrec.evaluation.cli` (the command).
"""

from __future__ import annotations

__all__ = ["run_prequential", "evaluate_specs", "make_method", "write_report"]


def __getattr__(name: str):  # lazy: `freshrec --help` should not import numpy, river, rtrec
    if name in ("run_prequential", "evaluate_specs"):
        from freshrec.evaluation import prequential

        return getattr(prequential, name)
    if name == "make_method":
        from freshrec.evaluation.methods import make_method

        return make_method
    if name == "write_report":
        from freshrec.evaluation.report import write_report

        return write_report
    raise AttributeError(name)
