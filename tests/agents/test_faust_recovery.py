"""The fixes to Faust's restart path, on stand-in objects (the broker-backed proof is the kill -9
test of the Faust engine in test_worker.py, with and without a slowed seek)."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest
from intervaltree import IntervalTree

from freshrec.agents import faust_recovery


class _Consumer:
    def __init__(self, assigned: set[str]) -> None:
        self.calls: list[tuple[str, set]] = []
        self.assigned = assigned

    def resume_partitions(self, tps) -> None:
        self.calls.append(("resume", set(tps)))

    async def perform_seek(self) -> None:
        await asyncio.sleep(0)
        self.calls.append(("seek", set()))

    def assignment(self) -> set[str]:
        return self.assigned


class _App:
    def __init__(self, consumer: _Consumer) -> None:
        self.consumer = consumer


class _Recovery:
    """Faust's order: resume the input partitions, then seek them."""

    def __init__(self, app: _App) -> None:
        self.app = app

    async def on_recovery_completed(self) -> str:
        consumer = self.app.consumer
        consumer.resume_partitions({"in-0", "in-1"})
        await consumer.perform_seek()
        return "done"


def test_input_partitions_are_resumed_only_after_the_recovery_step_has_sought_them():
    consumer = _Consumer(assigned={"in-0", "in-1", "changelog-0"})
    step = faust_recovery._resume_inputs_after(_Recovery.on_recovery_completed)
    assert asyncio.run(step(_Recovery(_App(consumer)))) == "done"
    assert consumer.calls == [("seek", set()), ("resume", {"in-0", "in-1"})]
    assert "resume_partitions" not in vars(consumer)  # the real method is back


def test_partitions_revoked_during_the_step_are_not_resumed():
    consumer = _Consumer(assigned={"in-1"})
    step = faust_recovery._resume_inputs_after(_Recovery.on_recovery_completed)
    asyncio.run(step(_Recovery(_App(consumer))))
    assert consumer.calls[-1] == ("resume", {"in-1"})


def test_a_step_that_raises_resumes_nothing_its_seek_may_not_have_run():
    class Failing(_Recovery):
        async def on_recovery_completed(self) -> str:
            self.app.consumer.resume_partitions({"in-0"})
            raise RuntimeError("rebalanced")

    consumer = _Consumer(assigned={"in-0"})
    step = faust_recovery._resume_inputs_after(Failing.on_recovery_completed)
    with pytest.raises(RuntimeError):
        asyncio.run(step(Failing(_App(consumer))))
    assert consumer.calls == []
    assert "resume_partitions" not in vars(consumer)


class _GapConsumer:
    def __init__(self, committed: int | None) -> None:
        self._committed_offset = defaultdict(lambda: committed)
        self._gap = defaultdict(IntervalTree)


def test_a_gap_leaves_out_the_record_that_revealed_it():
    c = _GapConsumer(committed=None)
    asyncio.run(faust_recovery._add_gap(c, "tp", 5, 9))  # read up to 4, then record 9 arrived
    gap = c._gap["tp"]
    assert all(gap.overlaps(o) for o in range(5, 9))
    assert not gap.overlaps(9)  # still to be processed: not committable through the gap


def test_a_gap_starts_after_the_committed_offset_and_an_empty_one_is_not_recorded():
    c = _GapConsumer(committed=6)
    asyncio.run(faust_recovery._add_gap(c, "tp", 5, 9))
    assert sorted((iv.begin, iv.end) for iv in c._gap["tp"]) == [(7, 9)]
    asyncio.run(faust_recovery._add_gap(c, "tp", 9, 9))
    assert sorted((iv.begin, iv.end) for iv in c._gap["tp"]) == [(7, 9)]


def test_apply_installs_the_fixes_into_faust_once():
    from faust.tables.recovery import Recovery
    from faust.transport.consumer import Consumer

    assert faust_recovery.apply() and faust_recovery.apply()
    assert Consumer._add_gap is faust_recovery._add_gap
    inner = Recovery.on_recovery_completed.__wrapped__
    assert not hasattr(inner, "__wrapped__")  # wrapped once, not once per apply()
    assert getattr(Recovery._resume_streams, "_freshrec_recovery_fix", False)
