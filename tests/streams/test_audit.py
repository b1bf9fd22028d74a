"""The audit trail reads in causal order even when a worker's record landed first."""

from freshrec.streams.audit import audit_record, in_causal_order


def test_a_workers_applied_record_that_landed_first_reads_after_the_change_it_applied() -> None:
    topic_order = [
        audit_record("register", "cli:a", model={"name": "m"}),
        audit_record("canary", "cli:a", revision=1),
        audit_record("applied", "worker:w", revision=1),
        audit_record("applied", "worker:w", revision=2),  # the worker was quicker than the CLI's producer
        audit_record("share", "cli:a", revision=2),
        audit_record("register", "cli:a", model={"name": "n"}),
        audit_record("promote", "cli:a", revision=3),
        audit_record("applied", "worker:w", revision=3),
    ]
    got = [(r["action"], r.get("revision")) for r in in_causal_order(topic_order)]
    assert got == [("register", None), ("canary", 1), ("applied", 1), ("share", 2), ("applied", 2),
                   ("register", None), ("promote", 3), ("applied", 3)]


def test_records_in_order_already_keep_it() -> None:
    recs = [audit_record("rollback", "guardrail", revision=4), audit_record("applied", "worker:x", revision=4),
            audit_record("applied", "worker:y", revision=4)]
    assert in_causal_order(recs) == recs
