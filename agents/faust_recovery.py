"""Fixes for faust-streaming's restart path that lost or stalled events after a ``kill -9``.

Found with ``tests/agents/test_worker.py::test_kill_9_mid_replay_then_restart_counts_every_event_exactly_once``
(faust-streaming 0.15.3). When table recovery completes, Faust

1. resumes the input partitions, then
2. seeks them to the committed offsets and resets its read offsets to them, then
3. clears the agents' input queues (``flow_control.resume()``).

The fetcher keeps running through all three. Input records fetched between 1 and 3 are
delivered to the agents' queues and move the read offsets on. Then two things go wrong:

- step 2 moves the read offsets back; step 3 drops what was queued;
- a record from a fetch made before the seek then arrives ahead of the seeked position. Faust
  takes the distance to it for a gap in the topic and counts the gap as processed. The
  records re-fetched from the seek are older than the read offset, so they are dropped as
  already read.

The events in between are never processed, and the commit moves past them. With a slower seek
(a broker slow to answer the offset fetch), the consumer also stalled for minutes.

The fix: keep the input partitions paused until the recovery step has returned, so no input
record is fetched before the seek and the queues are cleared. They are resumed at the seeked
position. Also fixed: ``Consumer._add_gap`` counted the record that revealed a gap as part of
the gap. Its offset was then committable before the record was processed.

Both fixes are applied by :func:`freshrec.agents.app.create_app` (once). The names they replace
are checked, so a Faust version without them is left alone and says so.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Awaitable, Callable

log = logging.getLogger("freshrec.worker")

_APPLIED = "_freshrec_recovery_fix"


def _resume_inputs_after(step: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Wrap a Recovery method: input partitions it resumes are resumed only when it returns."""

    @functools.wraps(step)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        consumer = self.app.consumer
        if "resume_partitions" in vars(consumer):  # inside another wrapped step: it resumes them
            return await step(self, *args, **kwargs)
        deferred: set = set()
        consumer.resume_partitions = deferred.update  # the instance attribute hides the method
        try:
            result = await step(self, *args, **kwargs)
        finally:
            del consumer.resume_partitions
        # Not after a step that raised: its seek may not have run (the recovery that follows
        # resumes them). Only what is still assigned: a rebalance during the step moves some.
        if deferred:
            consumer.resume_partitions(deferred & set(consumer.assignment()))
        return result

    setattr(wrapper, _APPLIED, True)
    return wrapper


async def _add_gap(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
    """Record that offsets ``offset_from`` up to, not including, ``offset_to`` are missing from
    the topic. ``offset_to`` is the record that revealed the gap, which is still to be processed
    (Faust's version included it)."""
    committed = self._committed_offset[tp]
    if committed is not None:
        offset_from = max(offset_from, committed + 1)
    if offset_from < offset_to:
        gap_for_tp = self._gap[tp]
        gap_for_tp.addi(offset_from, offset_to)
        gap_for_tp.merge_overlaps()


setattr(_add_gap, _APPLIED, True)


def apply() -> bool:
    """Install both fixes into Faust's classes (idempotent); False if this Faust lacks the names."""
    from faust.tables.recovery import Recovery
    from faust.transport.consumer import Consumer

    names = [(Recovery, "on_recovery_completed"), (Recovery, "_resume_streams"), (Consumer, "_add_gap")]
    missing = [f"{cls.__name__}.{name}" for cls, name in names if not hasattr(cls, name)]
    if missing:
        log.warning("Faust has no %s: its recovery fixes are not applied", ", ".join(missing))
        return False
    for name in ("on_recovery_completed", "_resume_streams"):
        if not getattr(getattr(Recovery, name), _APPLIED, False):
            setattr(Recovery, name, _resume_inputs_after(getattr(Recovery, name)))
    if not getattr(Consumer._add_gap, _APPLIED, False):
        Consumer._add_gap = _add_gap
    return True
