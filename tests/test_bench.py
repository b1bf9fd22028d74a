"""The benchmark's freshness accounting (pure functions; the benchmark itself is run by hand)."""

from freshrec.bench import made_during_and_after, newest_event_freshness


def test_a_list_counts_only_when_it_reflects_the_users_newest_event():
    newest = {"a": 1_000, "b": 2_000, "c": 3_000, "d": 4_000}
    lists = {
        "a": {"event_ts": 1_000, "generated_at": 1_150},  # reflects a's newest event, 150 ms after it
        "b": {"event_ts": 1_500, "generated_at": 1_600},  # fresh when made, but misses b's event at 2,000
        "c": {"event_ts": 3_200, "generated_at": 3_900},  # reflects a later event too: counts, 900 ms
        "d": None,  # no list at all
    }
    got = newest_event_freshness(newest, lists)
    assert got["active_users"] == 4
    assert got["reflecting_newest"] == 2
    assert got["share"] == 0.5
    assert got["p50_ms"] == 900  # of [150, 900], the upper middle (as _percentile takes it)
    assert got["p99_ms"] == 900


def test_lists_reflecting_the_newest_event_split_at_the_end_of_the_phase():
    newest = {"a": 1_000, "b": 2_000, "c": 3_000, "d": 4_000, "e": 4_500}
    lists = {
        "a": {"event_ts": 1_000, "generated_at": 1_150},  # made during the phase, 150 ms after
        "b": {"event_ts": 1_500, "generated_at": 9_000},  # misses b's newest event: not counted
        "c": {"event_ts": 3_000, "generated_at": 5_200},  # made after the phase (ended at 5,000)
        "d": {"event_ts": 4_000, "generated_at": 5_000},  # at the end: during
        "e": None,
    }
    got = made_during_and_after(newest, lists, ended_ms=5_000)
    assert got["during"] == {"lists": 2, "p50_ms": 1_000, "p99_ms": 1_000}
    assert got["after"] == {"lists": 1, "p50_ms": 2_200, "p99_ms": 2_200}
    assert made_during_and_after(newest, {}, 5_000)["after"] == {"lists": 0, "p50_ms": None, "p99_ms": None}


def test_no_active_users_gives_no_share():
    got = newest_event_freshness({}, {})
    assert got == {"active_users": 0, "reflecting_newest": 0, "share": None, "p50_ms": None, "p99_ms": None}


def test_process_cpu_seconds_grow_with_work_and_unknown_pids_give_none():
    import os
    import time

    from freshrec.bench import process_cpu_s

    before = process_cpu_s(os.getpid())
    t_end = time.process_time() + 0.3
    while time.process_time() < t_end:  # burn ~0.3 s of CPU
        pass
    after = process_cpu_s(os.getpid())
    assert before is not None and 0.2 <= after - before <= 5.0
    assert process_cpu_s(2**31 - 1) is None  # no such process


def test_cpu_split_gives_the_cores_each_process_used_and_the_machines_idle_ones():
    import os
    import time

    from freshrec.bench import CpuSplit, cores_line, process_cpu_s

    cpu0, t0 = process_cpu_s(os.getpid()), time.monotonic()
    split = CpuSplit({"me": os.getpid(), "gone": 2**31 - 1, "unknown": None})
    t_end = time.process_time() + 0.3
    while time.process_time() < t_end:  # burn ~0.3 s of CPU, however long the machine takes to give it
        pass
    cores = split.cores()
    used = (process_cpu_s(os.getpid()) - cpu0) / (time.monotonic() - t0)  # cores, measured around it
    assert set(cores) == {"me", "idle"}  # a pid that cannot be read, or none, is left out
    assert cores["me"] >= 0.1 and abs(cores["me"] - used) < 0.1
    assert 0.0 <= cores["idle"] <= os.cpu_count()
    line = cores_line(cores)
    assert line.startswith("CPU while the phase was produced, in cores: me ") and f"of {os.cpu_count()} idle" in line


def test_a_quick_list_counts_from_when_it_was_published_and_not_as_a_ranked_list():
    newest = {"a": 1_000, "b": 2_000, "c": 3_000}
    lists = {
        "a": {"event_ts": 1_000, "generated_at": 1_150, "tier": "quick", "reflected_at": 1_150},
        # ranked 4 s after a quick list reflected b's event 100 ms after it
        "b": {"event_ts": 2_000, "generated_at": 6_000, "tier": "ranked", "reflected_at": 2_100},
        "c": {"event_ts": 3_000, "generated_at": 3_300, "tier": "ranked", "reflected_at": 3_300},
    }
    first = newest_event_freshness(newest, lists)
    assert first["reflecting_newest"] == 3 and first["p99_ms"] == 300
    ranked = newest_event_freshness(newest, lists, ranked=True)
    assert ranked["reflecting_newest"] == 2 and ranked["p50_ms"] == 4_000
    split = made_during_and_after(newest, lists, ended_ms=5_000, ranked=True)
    assert split["during"]["lists"] == 1 and split["after"] == {"lists": 1, "p50_ms": 4_000, "p99_ms": 4_000}
    assert made_during_and_after(newest, lists, ended_ms=5_000)["after"]["lists"] == 0


def test_freshness_samples_count_from_the_first_reflecting_list_or_the_ranked_one():
    from freshrec.bench import freshness_samples

    docs = [{"event_ts": 1_000, "generated_at": 1_200, "tier": "quick", "reflected_at": 1_200},
            {"event_ts": 2_000, "generated_at": 5_000, "tier": "ranked", "reflected_at": 2_300},
            {"event_ts": 3_000, "generated_at": 3_100}]  # written before tiers existed: ranked
    assert freshness_samples(docs) == [200, 300, 100]
    assert freshness_samples(docs, ranked=True) == [3_000, 100]
