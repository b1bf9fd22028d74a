"""The stream worker's catalogue gate (interactions wait for the catalogue backlog): its rule, no broker."""

from __future__ import annotations

from freshrec.agents.stream_worker import CatalogueGate


def gate(**kw) -> CatalogueGate:
    return CatalogueGate({0: 10, 3: 5}, paused=[], max_s=kw.pop("max_s", 60.0), now=0.0, **kw)


def test_opens_once_every_catalogue_partition_reaches_its_high_watermark():
    g = gate()
    assert g.should_open({}, now=0.1) is None
    assert g.should_open({0: 10}, now=0.2) is None  # partition 3 not read yet
    assert g.should_open({0: 10, 3: 4}, now=0.3) is None
    assert g.should_open({0: 10, 3: 5}, now=0.4) == "caught up"
    assert gate().should_open({0: 12, 3: 9, 5: 1}, now=0.1) == "caught up"  # past it (new upserts) counts


def test_opens_when_the_catalogue_offsets_stop_moving():
    g = gate(stall_s=2.0)
    assert g.should_open({0: 3}, now=1.0) is None
    assert g.should_open({0: 6}, now=2.5) is None  # moved: the stall clock restarts
    assert g.should_open({0: 6}, now=4.0) is None
    assert g.should_open({0: 6}, now=4.6) == "stalled"


def test_opens_after_at_most_max_s_while_the_catalogue_still_moves():
    g = gate(max_s=3.0, stall_s=2.0)
    for t, off in ((1.0, 1), (2.0, 2), (2.9, 3)):
        assert g.should_open({0: off}, now=t) is None
    assert g.should_open({0: 4}, now=3.0) == "timeout"
