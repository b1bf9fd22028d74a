"""Loaded by a worker subprocess whose PYTHONPATH starts here (tests/agents/test_worker.py): it
widens the window around Faust's post-recovery seek so that a race there shows on every run.

``seek_to_committed`` waits ``FRESHREC_TEST_SEEK_DELAY_S`` before and after the seek itself.
While it waits, the consumer's fetcher goes on: input records fetched before the seek, or
after it but before Faust resets its read offsets, are what the race is made of.
"""

import asyncio
import os

_delay = float(os.environ.get("FRESHREC_TEST_SEEK_DELAY_S", "0") or 0)
if _delay > 0:
    from faust.transport.consumer import ThreadDelegateConsumer

    _seek = ThreadDelegateConsumer.seek_to_committed

    async def _slow_seek_to_committed(self):
        await asyncio.sleep(_delay)
        offsets = await _seek(self)
        await asyncio.sleep(_delay)
        return offsets

    ThreadDelegateConsumer.seek_to_committed = _slow_seek_to_committed
