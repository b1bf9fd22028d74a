"""The event contract: every valid shape passes, every reason code is produced where it should."""

from __future__ import annotations

import math
import pickle
import time

import orjson
import pytest

from freshrec.streams import schema
from freshrec.streams.schema import (
    CATALOGUE_TYPES,
    EVENT_TYPES,
    INTERACTION_TYPES,
    REASONS,
    SCHEMA_VERSION,
    InvalidEvent,
    decode_event,
    encode_event,
    make_event,
    validate_event,
)

NOW = 1_700_000_000_000
DAY = 86_400_000
LIMITS = {"max_bytes": 65536, "now_ms": NOW, "max_future_ms": DAY}


def base(etype: str, **fields) -> dict:
    return {"v": 1, "type": etype, "event_id": "e1", "ts": NOW - 1000, **fields}


VALID = {
    "impression": base("impression", user_id="u1", request_id="r1", item_ids=["a", "b", "c"], surface="home"),
    "click": base("click", user_id="u1", item_id="a", request_id="r1", position=0),
    "conversion": base("conversion", user_id="u1", item_id="a", value=12.5, position=2),
    "dismiss": base("dismiss", user_id="u1", item_id="a"),
    "rating": base("rating", user_id="u1", item_id="a", value=4),
    "user_delete": base("user_delete", user_id="u1"),
    "item_upsert": base("item_upsert", item_id="a", category="news", tags=["x", "y"], text="hello",
                        created_at=-86400000),
    "item_delete": base("item_delete", item_id="a"),
}


def decode(obj_or_raw) -> dict:
    raw = obj_or_raw if isinstance(obj_or_raw, bytes) else orjson.dumps(obj_or_raw)
    return decode_event(raw, **LIMITS)


def reject(obj_or_raw) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        decode(obj_or_raw)
    return info.value


def test_type_sets():
    assert SCHEMA_VERSION == 1
    assert INTERACTION_TYPES | CATALOGUE_TYPES == EVENT_TYPES
    assert not INTERACTION_TYPES & CATALOGUE_TYPES
    assert "user_delete" in INTERACTION_TYPES
    assert set(VALID) == EVENT_TYPES


@pytest.mark.parametrize("etype", sorted(VALID))
def test_valid_events_pass_unchanged(etype):
    event = VALID[etype]
    assert decode(event) == event


def test_minimal_events_pass():
    assert decode(base("click", user_id="u", item_id="i"))["type"] == "click"
    assert decode(base("item_upsert", item_id="i"))["type"] == "item_upsert"


def test_missing_version_means_1_and_float_ts_is_truncated():
    event = {"type": "click", "event_id": "e", "ts": 1699999999999.9, "user_id": "u", "item_id": "i"}
    out = decode(event)
    assert out["v"] == 1
    assert out["ts"] == 1699999999999 and type(out["ts"]) is int


def test_validate_event_normalises_in_place_and_returns_same_dict():
    event = {"type": "rating", "event_id": "e", "ts": 5.7, "user_id": "u", "item_id": "i", "value": 3.5}
    out = validate_event(event, NOW, DAY)
    assert out is event and event["v"] == 1 and event["ts"] == 5


def test_optional_null_fields_count_as_absent_and_extra_fields_are_kept():
    event = base("click", user_id="u", item_id="i", request_id=None, position=None, context=None,
                 experiment="B")
    assert decode(event)["experiment"] == "B"
    assert decode(base("click", user_id="u", item_id="i", context={"device": "ios"}))["context"] == {"device": "ios"}


def test_float_created_at_is_truncated_and_may_be_negative():
    out = decode(base("item_upsert", item_id="i", created_at=-1234.9))
    assert out["created_at"] == -1234


# ------------------------------------------------------------------------------- reason codes

@pytest.mark.parametrize("raw", [b"", b"{", b'{"type": "click",}', b"\xff\xfe", b"NaN", b"{'a': 1}"])
def test_not_json(raw):
    assert reject(raw).reason == "not_json"


@pytest.mark.parametrize("raw", [b"[1, 2]", b"42", b'"click"', b"null", b"true"])
def test_not_object(raw):
    err = reject(raw)
    assert err.reason == "not_object"
    assert "JSON object" in err.detail


def test_validate_event_rejects_non_dicts():
    with pytest.raises(InvalidEvent) as info:
        validate_event([1], NOW, DAY)  # type: ignore[arg-type]
    assert info.value.reason == "not_object"


def test_oversized_is_checked_before_parsing(monkeypatch):
    payload = b'{"pad": "' + b"x" * (2 * 1024 * 1024) + b'"}'  # a 2 MB (valid JSON) payload

    def boom(*args, **kwargs):
        raise AssertionError("orjson.loads called on an oversized payload")

    monkeypatch.setattr(schema.orjson, "loads", boom)
    err = reject(payload)
    assert err.reason == "oversized"
    assert str(len(payload)) in err.detail and "65536" in err.detail
    # also garbage: the size decides, not the content
    assert reject(b"\xff" * 70000).reason == "oversized"


def test_size_limit_is_inclusive():
    event = base("click", user_id="u", item_id="i")
    raw = orjson.dumps(event)
    assert decode_event(raw, max_bytes=len(raw), now_ms=NOW, max_future_ms=DAY) == event
    with pytest.raises(InvalidEvent) as info:
        decode_event(raw, max_bytes=len(raw) - 1, now_ms=NOW, max_future_ms=DAY)
    assert info.value.reason == "oversized"


@pytest.mark.parametrize("v", [2, 0, "1", True, 1.0, None, [1]])
def test_unsupported_version(v):
    err = reject({**VALID["click"], "v": v})
    assert err.reason == "unsupported_version"
    assert "'v'" in err.detail


def test_unknown_type():
    err = reject(base("purchase", user_id="u", item_id="i"))
    assert err.reason == "unknown_type"
    assert "'purchase'" in err.detail and "click" in err.detail


@pytest.mark.parametrize("etype,field", [
    ("click", "user_id"), ("click", "item_id"), ("conversion", "item_id"), ("dismiss", "user_id"),
    ("impression", "request_id"), ("impression", "item_ids"), ("impression", "user_id"),
    ("rating", "value"), ("rating", "item_id"), ("user_delete", "user_id"),
    ("item_upsert", "item_id"), ("item_delete", "item_id"),
    ("click", "event_id"), ("click", "ts"), ("item_upsert", "ts"),
])
def test_missing_field_names_field_and_type(etype, field):
    event = dict(VALID[etype])
    del event[field]
    err = reject(event)
    assert err.reason == "missing_field"
    assert err.detail == f"missing field '{field}' for type '{etype}'"


def test_missing_type_and_null_required_field():
    event = dict(VALID["click"])
    del event["type"]
    assert reject(event).detail == "missing field 'type'"
    err = reject({**VALID["click"], "user_id": None})
    assert (err.reason, err.detail) == ("missing_field", "missing field 'user_id' for type 'click'")


@pytest.mark.parametrize("etype,field,value,named", [
    ("click", "user_id", "", "user_id"),
    ("click", "item_id", "", "item_id"),
    ("click", "event_id", "", "event_id"),
    ("click", "request_id", "", "request_id"),
    ("impression", "request_id", "", "request_id"),
    ("impression", "item_ids", [], "item_ids"),
    ("impression", "item_ids", ["a", ""], "item_ids[1]"),
    ("item_upsert", "item_id", "", "item_id"),
])
def test_empty_field(etype, field, value, named):
    err = reject({**VALID[etype], field: value})
    assert err.reason == "empty_field"
    assert f"'{named}'" in err.detail and f"'{etype}'" in err.detail


@pytest.mark.parametrize("etype,field,value,named", [
    ("click", "user_id", 42, "user_id"),  # ids are strings: producers must stringify
    ("click", "item_id", 7, "item_id"),
    ("click", "event_id", 1, "event_id"),
    ("click", "ts", "1700000000000", "ts"),
    ("click", "ts", True, "ts"),  # bool is not a timestamp
    ("click", "ts", [1], "ts"),
    ("click", "position", 1.5, "position"),
    ("click", "position", True, "position"),
    ("click", "position", "3", "position"),
    ("click", "context", ["x"], "context"),
    ("click", "context", "x", "context"),
    ("conversion", "value", "9.99", "value"),
    ("conversion", "value", False, "value"),
    ("rating", "value", "5", "value"),
    ("impression", "item_ids", "a b c", "item_ids"),
    ("impression", "item_ids", ["a", 2], "item_ids[1]"),
    ("impression", "surface", 1, "surface"),
    ("item_upsert", "category", 3, "category"),
    ("item_upsert", "tags", "x", "tags"),
    ("item_upsert", "tags", ["x", None], "tags[1]"),
    ("item_upsert", "text", ["t"], "text"),
    ("item_upsert", "created_at", "2020-01-01", "created_at"),
    ("item_upsert", "created_at", True, "created_at"),
])
def test_wrong_type(etype, field, value, named):
    err = reject({**VALID[etype], field: value})
    assert err.reason == "wrong_type"
    assert f"field '{named}'" in err.detail and f"'{etype}'" in err.detail


def test_wrong_type_of_type_field():
    assert reject({**VALID["click"], "type": 3}).reason == "wrong_type"


@pytest.mark.parametrize("etype,field,value", [
    ("click", "position", -1),
    ("click", "ts", -5),
    ("click", "ts", -5.5),
])
def test_bad_value(etype, field, value):
    err = reject({**VALID[etype], field: value})
    assert err.reason == "bad_value"
    assert f"'{field}'" in err.detail


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_numbers_are_bad_values(value):
    # JSON cannot carry them (orjson rejects NaN/Infinity), but dicts given to the producer can
    for event in ({**VALID["rating"], "value": value}, {**VALID["click"], "ts": value}):
        with pytest.raises(InvalidEvent) as info:
            validate_event(dict(event), NOW, DAY)
        assert info.value.reason == "bad_value"


def test_future_timestamp():
    ok = decode({**VALID["click"], "ts": NOW + DAY})  # exactly at the limit
    assert ok["ts"] == NOW + DAY
    err = reject({**VALID["click"], "ts": NOW + DAY + 1})
    assert err.reason == "future_timestamp"
    assert "'ts'" in err.detail
    far = reject({**VALID["click"], "ts": NOW * 1000})  # microseconds by mistake
    assert far.reason == "future_timestamp"


def test_every_reason_code_is_covered_here():
    produced = {
        reject(b"{").reason, reject(b"[]").reason, reject(b"x" * 70000).reason,
        reject({**VALID["click"], "v": 2}).reason, reject(base("nope")).reason,
        reject(base("click", item_id="i")).reason, reject(base("click", user_id="", item_id="i")).reason,
        reject(base("click", user_id=1, item_id="i")).reason,
        reject(base("click", user_id="u", item_id="i", position=-1)).reason,
        reject({**VALID["click"], "ts": NOW + 2 * DAY}).reason,
    }
    assert produced == set(REASONS)


def test_invalid_event_is_a_value_error_and_pickles():
    err = InvalidEvent("missing_field", "missing field 'user_id' for type 'click'")
    assert isinstance(err, ValueError)
    assert "missing_field" in str(err)
    back = pickle.loads(pickle.dumps(err))
    assert (back.reason, back.detail) == (err.reason, err.detail)


# ------------------------------------------------------------------------------- encode / builders

@pytest.mark.parametrize("etype", sorted(VALID))
def test_round_trip(etype):
    event = VALID[etype]
    raw = encode_event(event)
    assert isinstance(raw, bytes)
    assert decode(raw) == event
    assert encode_event(decode(raw)) == raw


def test_unicode_round_trip():
    event = base("item_upsert", item_id="ñ-1", text="Café ☕ 東京", tags=["é"])
    assert decode(encode_event(event)) == event


def test_make_event_fills_v_ts_and_uuid_event_id():
    before = schema.now_ms()
    a = make_event("click", user_id="u", item_id="i")
    b = make_event("click", user_id="u", item_id="i")
    assert a["v"] == 1 and a["type"] == "click"
    assert before <= a["ts"] <= schema.now_ms()
    assert a["event_id"] != b["event_id"] and len(a["event_id"]) == 36
    kept = make_event("click", user_id="u", item_id="i", event_id="mine", ts=5)
    assert (kept["event_id"], kept["ts"]) == ("mine", 5)
    assert validate_event(a, schema.now_ms(), DAY) is a


def test_typed_builders_make_valid_events():
    events = [
        schema.impression("u", "r", ["a", "b"], surface="home"),
        schema.click("u", "a", request_id="r", position=1),
        schema.conversion("u", "a", value=3.0),
        schema.dismiss("u", "b"),
        schema.rating("u", "a", 5),
        schema.user_delete("u"),
        schema.item_upsert("a", category="c", tags=["t"], text="x", created_at=0),
        schema.item_delete("a"),
    ]
    assert {e["type"] for e in events} == EVENT_TYPES
    for e in events:
        assert decode_event(encode_event(e), max_bytes=65536, now_ms=schema.now_ms(), max_future_ms=DAY) == e


def test_make_event_rejects_unknown_type():
    with pytest.raises(InvalidEvent) as info:
        make_event("clik", user_id="u")
    assert info.value.reason == "unknown_type"


def test_decode_is_fast():
    """A guard against accidental slowness (the worker needs well over 50k events/s)."""
    raws = [encode_event(e) for e in VALID.values()] * 1250
    best = 0.0
    for _ in range(3):  # best of three: a busy CI machine should not make this flaky
        t0 = time.perf_counter()
        for raw in raws:
            decode_event(raw, max_bytes=65536, now_ms=NOW, max_future_ms=DAY)
        best = max(best, len(raws) / (time.perf_counter() - t0))
    assert best > 50_000, f"decode+validate at {best:,.0f} events/s"
