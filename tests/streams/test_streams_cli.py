"""``freshrec produce`` / ``freshrec replay`` commands."""

from __future__ import annotations

import orjson
import pytest
from click.testing import CliRunner

from freshrec.streams.cli import produce, replay


def runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        return CliRunner()  # click >= 8.2 keeps stderr apart already


def test_help_texts_have_examples():
    r = runner()
    out = r.invoke(produce, ["--help"]).output
    assert "freshrec produce" in out and "--raw" in out and "dead-letter" in out
    out = r.invoke(replay, ["--help"]).output
    assert "--dataset" in out and "movielens:" in out and "--no-progress" in out and "--rate" in out


@pytest.mark.parametrize("args,message", [
    (["--dataset", "bogus"], "unknown dataset"),
    (["--dataset", "movielens:/definitely/not/here"], "does not exist"),
    (["--dataset", "synthetic", "--rate", "0"], "must be > 0"),
])
def test_replay_rejects_bad_arguments_before_touching_kafka(args, message):
    result = runner().invoke(replay, args, env={"FRESHREC_KAFKA_BROKERS": "127.0.0.1:1"})
    assert result.exit_code == 2
    assert message in result.stderr


def line(**fields) -> bytes:
    return orjson.dumps(fields)


@pytest.mark.integration
def test_produce_routes_valid_lines_and_dead_letters_invalid_ones(settings, consume):
    from freshrec.streams.deadletter import read_deadletters

    lines = [
        line(type="item_upsert", event_id="c1", ts=1_700_000_000_000, item_id="i1", category="c"),
        line(type="click", event_id="e1", ts=1_700_000_000_001, user_id="u1", item_id="i1"),
        b"this is not json",
        b"",  # skipped, not counted
        line(type="click", event_id="e2", ts=1_700_000_000_002, user_id=42, item_id="i1"),
        line(v=1, type="rating", event_id="e3", ts=1_700_000_000_003.7, user_id="u2", item_id="i1", value=5),
    ]
    result = runner().invoke(produce, input=b"\n".join(lines) + b"\n", env=settings.to_env())
    assert result.exit_code == 0, result.stderr
    assert "produced 3 events" in result.stderr
    assert "dead-lettered 2 invalid lines" in result.stderr and "not_json 1" in result.stderr
    assert "line 5: wrong_type: field 'user_id'" in result.stderr
    interactions = [orjson.loads(m.value()) for m in consume(settings.kafka_brokers, settings.interactions_topic)]
    assert sorted(e["event_id"] for e in interactions) == ["e1", "e3"]
    assert next(e for e in interactions if e["event_id"] == "e3")["ts"] == 1_700_000_000_003  # normalised
    assert [m.key() for m in consume(settings.kafka_brokers, settings.catalogue_topic)] == [b"i1"]
    dead = read_deadletters(settings, timeout_s=20)
    assert [(d.reason, d.source_topic, d.source_partition, d.source_offset, d.original) for d in dead] == [
        ("not_json", "stdin", -1, 3, b"this is not json"),
        ("wrong_type", "stdin", -1, 5, lines[4]),
    ]


@pytest.mark.integration
def test_produce_raw_sends_every_line_verbatim(settings, consume):
    lines = [line(type="click", event_id="e1", ts=1, user_id="u7", item_id="i"), b"garbage", b'{"user_id": 5}']
    result = runner().invoke(produce, ["--raw"], input=b"\n".join(lines), env=settings.to_env())
    assert result.exit_code == 0, result.stderr
    assert "produced 3 raw lines" in result.stderr
    msgs = consume(settings.kafka_brokers, settings.interactions_topic)
    assert sorted((m.value(), m.key()) for m in msgs) == sorted(
        [(lines[0], b"u7"), (b"garbage", None), (lines[2], None)], key=lambda vk: vk[0])


@pytest.mark.integration
def test_replay_command(settings, count_messages):
    result = runner().invoke(replay, ["--dataset", "synthetic:users=20,items=30,events=700,seed=2", "--no-progress",
                                      "--limit", "530"], env=settings.to_env())
    assert result.exit_code == 0, result.stderr
    assert "replayed 530 events" in result.stderr and "failed 0" in result.stderr
    assert count_messages(settings.kafka_brokers, settings.catalogue_topic) == 30
    assert count_messages(settings.kafka_brokers, settings.interactions_topic) == 500
