"""The event contract: what an event on the interactions / catalogue topics must look like.

Events are JSON objects (encoded with orjson). Every event has

* ``v``: schema version, an int; optional on input (missing means 1), other values are rejected;
* ``type``: one of :data:`EVENT_TYPES`;
* ``event_id``: non-empty string, the idempotency key (a resent event is applied once);
* ``ts``: event time in epoch **milliseconds** (int; floats are accepted and truncated, bools are
  rejected);
* optionally ``context``: an object, passed through untouched.

Interaction types (topic ``{prefix}.interactions``, key = ``user_id``)::

    impression  user_id, request_id, item_ids (non-empty list of ids, shown order), [surface]
    click       user_id, item_id, [request_id], [position >= 0]
    conversion  user_id, item_id, [request_id], [position >= 0], [value: number]
    dismiss     user_id, item_id, [request_id], [position >= 0]
    rating      user_id, item_id, value: number
    user_delete user_id

Catalogue types (topic ``{prefix}.catalogue``, compacted, key = ``item_id``)::

    item_upsert item_id, [category: str], [tags: list of str], [text: str],
                [created_at: epoch ms int, may be negative]
    item_delete item_id

Ids are non-empty strings; numbers are *not* accepted as ids (loaders stringify them). An
optional field given as ``null`` counts as absent. Unknown extra fields are kept (forward
compatibility). Validation is plain dict/type checks because it runs once per event in the
worker (well above 50k events/s); no schema library is involved.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any, Callable

import orjson

SCHEMA_VERSION = 1

INTERACTION_TYPES: frozenset[str] = frozenset(
    {"impression", "click", "conversion", "dismiss", "rating", "user_delete"})
CATALOGUE_TYPES: frozenset[str] = frozenset({"item_upsert", "item_delete"})
EVENT_TYPES: frozenset[str] = INTERACTION_TYPES | CATALOGUE_TYPES

#: Every ``InvalidEvent.reason`` this module raises (the worker may add its own, e.g. ``wrong_topic``).
REASONS: tuple[str, ...] = (
    "not_json", "not_object", "oversized", "unsupported_version", "unknown_type",
    "missing_field", "empty_field", "wrong_type", "bad_value", "future_timestamp",
)


class InvalidEvent(ValueError):
    """An event that breaks the contract. ``reason`` is a short code, ``detail`` a sentence."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple:  # keep (reason, detail) through pickling
        return (type(self), (self.reason, self.detail))


def now_ms() -> int:
    """Wall clock in epoch milliseconds."""
    return time.time_ns() // 1_000_000


# ---------------------------------------------------------------------------------- field checks
# Each check gets (value, field name, event type) for a present, non-null value and returns the
# (possibly normalised) value or raises InvalidEvent. Kept as small module-level functions: the
# per-event cost is a handful of type() comparisons.

_MISSING = object()


def _tname(value: Any) -> str:
    if value is None:
        return "null"
    t = type(value)
    if t is bool:
        return "bool"
    if t is dict:
        return "object"
    if t is list:
        return "list"
    if t is str:
        return "string"
    if t in (int, float):
        return "number"
    return t.__name__


def _wrong(name: str, etype: str, expected: str, value: Any) -> InvalidEvent:
    return InvalidEvent("wrong_type",
                        f"field '{name}' for type '{etype}' must be {expected}, got {_tname(value)}")


def _id(value: Any, name: str, etype: str) -> Any:
    if type(value) is not str:
        raise _wrong(name, etype, "a string", value)
    if not value:
        raise InvalidEvent("empty_field", f"field '{name}' is empty for type '{etype}'")
    return value


def _str(value: Any, name: str, etype: str) -> Any:
    if type(value) is not str:
        raise _wrong(name, etype, "a string", value)
    return value


def _id_list(value: Any, name: str, etype: str) -> Any:
    if type(value) is not list:
        raise _wrong(name, etype, "a list of strings", value)
    if not value:
        raise InvalidEvent("empty_field", f"field '{name}' is an empty list for type '{etype}'")
    for x in value:
        if type(x) is not str or not x:
            break
    else:
        return value
    for i, x in enumerate(value):  # slow path: name the offending element
        if type(x) is not str:
            raise _wrong(f"{name}[{i}]", etype, "a string", x)
        if not x:
            raise InvalidEvent("empty_field", f"field '{name}[{i}]' is empty for type '{etype}'")
    return value


def _str_list(value: Any, name: str, etype: str) -> Any:
    if type(value) is not list:
        raise _wrong(name, etype, "a list of strings", value)
    for i, x in enumerate(value):
        if type(x) is not str:
            raise _wrong(f"{name}[{i}]", etype, "a string", x)
    return value


def _position(value: Any, name: str, etype: str) -> Any:
    if type(value) is not int:
        raise _wrong(name, etype, "an integer", value)
    if value < 0:
        raise InvalidEvent("bad_value", f"field '{name}' for type '{etype}' must be >= 0, got {value}")
    return value


def _number(value: Any, name: str, etype: str) -> Any:
    t = type(value)
    if t is int:
        return value
    if t is float:
        if not math.isfinite(value):
            raise InvalidEvent("bad_value", f"field '{name}' for type '{etype}' must be finite, got {value}")
        return value
    raise _wrong(name, etype, "a number", value)


def _millis(value: Any, name: str, etype: str) -> Any:
    t = type(value)
    if t is float:
        if not math.isfinite(value):
            raise InvalidEvent("bad_value", f"field '{name}' for type '{etype}' must be finite, got {value}")
        value = int(value)
    elif t is not int:
        raise _wrong(name, etype, "an integer (epoch milliseconds)", value)
    if value < 0:
        raise InvalidEvent("bad_value",
                           f"field '{name}' for type '{etype}' must be >= 0 (epoch ms), got {value}")
    return value


def _epoch_ms(value: Any, name: str, etype: str) -> Any:
    """Like :func:`_millis` but any sign: a catalogue date may precede 1970 (old films)."""
    t = type(value)
    if t is float:
        if not math.isfinite(value):
            raise InvalidEvent("bad_value", f"field '{name}' for type '{etype}' must be finite, got {value}")
        return int(value)
    if t is not int:
        raise _wrong(name, etype, "an integer (epoch milliseconds)", value)
    return value


def _object(value: Any, name: str, etype: str) -> Any:
    if type(value) is not dict:
        raise _wrong(name, etype, "an object", value)
    return value


_Check = Callable[[Any, str, str], Any]
_Field = tuple[str, _Check, bool]  # (name, check, required)

_USER = ("user_id", _id, True)
_ITEM = ("item_id", _id, True)
_FEEDBACK: tuple[_Field, ...] = (_USER, _ITEM, ("request_id", _id, False), ("position", _position, False))

#: Per type: the fields beyond the common ones (v, type, event_id, ts, context).
FIELDS: dict[str, tuple[_Field, ...]] = {
    "impression": (_USER, ("request_id", _id, True), ("item_ids", _id_list, True), ("surface", _str, False)),
    "click": _FEEDBACK,
    "conversion": _FEEDBACK + (("value", _number, False),),
    "dismiss": _FEEDBACK,
    "rating": (_USER, _ITEM, ("value", _number, True)),
    "user_delete": (_USER,),
    "item_upsert": (_ITEM, ("category", _str, False), ("tags", _str_list, False), ("text", _str, False),
                    ("created_at", _epoch_ms, False)),
    "item_delete": (_ITEM,),
}
assert set(FIELDS) == EVENT_TYPES

_TYPES_TEXT = ", ".join(sorted(EVENT_TYPES))


def validate_event(obj: dict, now_ms: int, max_future_ms: int) -> dict:
    """Check ``obj`` against the contract; fills ``v`` and truncates a float ``ts`` in place.

    Returns ``obj`` itself (no copy: this runs per event in the worker). Raises
    :class:`InvalidEvent` naming the first offending field.
    """
    if type(obj) is not dict:
        raise InvalidEvent("not_object", f"event must be a JSON object, got {_tname(obj)}")
    get = obj.get
    v = get("v", _MISSING)
    if v is _MISSING:
        obj["v"] = SCHEMA_VERSION
    elif type(v) is not int or v != SCHEMA_VERSION:
        raise InvalidEvent("unsupported_version",
                           f"unsupported schema version {v!r} (field 'v'); this build reads v={SCHEMA_VERSION}")
    etype = get("type")
    if etype is None:
        raise InvalidEvent("missing_field", "missing field 'type'")
    if type(etype) is not str:
        raise InvalidEvent("wrong_type", f"field 'type' must be a string, got {_tname(etype)}")
    spec = FIELDS.get(etype)
    if spec is None:
        shown = etype if len(etype) <= 64 else etype[:64] + "..."
        raise InvalidEvent("unknown_type", f"unknown event type {shown!r} (known: {_TYPES_TEXT})")

    event_id = get("event_id")
    if type(event_id) is not str or not event_id:
        if event_id is None:
            raise InvalidEvent("missing_field", f"missing field 'event_id' for type '{etype}'")
        _id(event_id, "event_id", etype)

    ts = get("ts")
    if ts is None:
        raise InvalidEvent("missing_field", f"missing field 'ts' for type '{etype}'")
    if type(ts) is not int:
        ts = obj["ts"] = _millis(ts, "ts", etype)
    elif ts < 0:
        raise InvalidEvent("bad_value", f"field 'ts' for type '{etype}' must be >= 0 (epoch ms), got {ts}")
    if ts > now_ms + max_future_ms:
        raise InvalidEvent("future_timestamp",
                           f"field 'ts' for type '{etype}' is {ts - now_ms} ms in the future "
                           f"(ts={ts}, now={now_ms}, limit {max_future_ms} ms): microseconds instead of "
                           f"milliseconds, or a wrong clock?")

    for name, check, required in spec:
        value = get(name)
        if value is None:
            if required:
                raise InvalidEvent("missing_field", f"missing field '{name}' for type '{etype}'")
        elif check is _id:  # inline fast path for the most common field kind
            if type(value) is not str or not value:
                _id(value, name, etype)
        elif check is _epoch_ms:
            if type(value) is not int:
                obj[name] = _epoch_ms(value, name, etype)
        else:
            check(value, name, etype)

    ctx = get("context")
    if ctx is not None and type(ctx) is not dict:
        raise _wrong("context", etype, "an object", ctx)
    return obj


def decode_event(raw: bytes, *, max_bytes: int, now_ms: int, max_future_ms: int) -> dict:
    """Parse and validate one message value. The size is checked first, before any parsing."""
    size = len(raw)
    if size > max_bytes:
        raise InvalidEvent("oversized", f"event is {size} bytes, the limit is {max_bytes} (max_event_bytes)")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent("not_json", f"not valid JSON: {exc}") from None
    if type(obj) is not dict:
        raise InvalidEvent("not_object", f"event must be a JSON object, got {_tname(obj)}")
    return validate_event(obj, now_ms, max_future_ms)


def encode_event(event: dict) -> bytes:
    """The wire form of ``event`` (compact JSON, UTF-8)."""
    return orjson.dumps(event)


# -------------------------------------------------------------------------------------- builders

def make_event(type: str, **fields: Any) -> dict:  # noqa: A002 - the contract's field name
    """A new event of ``type``: fills ``v``, ``ts`` (now, ms) and a uuid4 ``event_id`` when absent.

    Does not validate the fields (``EventProducer.send`` and the worker do); an unknown ``type``
    raises :class:`InvalidEvent` right away since it is always a typo.
    """
    if type not in EVENT_TYPES:
        raise InvalidEvent("unknown_type", f"unknown event type {type!r} (known: {_TYPES_TEXT})")
    event = {"v": SCHEMA_VERSION, "type": type}
    event.update(fields)
    if event.get("event_id") is None:
        event["event_id"] = str(uuid.uuid4())
    if event.get("ts") is None:
        event["ts"] = now_ms()
    return event


def impression(user_id: str, request_id: str, item_ids: list[str], **fields: Any) -> dict:
    """An ``impression``: ``item_ids`` were shown to ``user_id`` in this order."""
    return make_event("impression", user_id=user_id, request_id=request_id, item_ids=list(item_ids), **fields)


def click(user_id: str, item_id: str, **fields: Any) -> dict:
    """A ``click`` (optional ``request_id``, ``position``)."""
    return make_event("click", user_id=user_id, item_id=item_id, **fields)


def conversion(user_id: str, item_id: str, **fields: Any) -> dict:
    """A ``conversion`` (optional ``request_id``, ``position``, ``value``)."""
    return make_event("conversion", user_id=user_id, item_id=item_id, **fields)


def dismiss(user_id: str, item_id: str, **fields: Any) -> dict:
    """A ``dismiss``: the user rejected an item (optional ``request_id``, ``position``)."""
    return make_event("dismiss", user_id=user_id, item_id=item_id, **fields)


def rating(user_id: str, item_id: str, value: float, **fields: Any) -> dict:
    """A ``rating`` of ``item_id`` by ``user_id``."""
    return make_event("rating", user_id=user_id, item_id=item_id, value=value, **fields)


def user_delete(user_id: str, **fields: Any) -> dict:
    """Forget ``user_id`` (ordered with that user's interactions: same topic and key)."""
    return make_event("user_delete", user_id=user_id, **fields)


def item_upsert(item_id: str, **fields: Any) -> dict:
    """Create or replace catalogue item ``item_id`` (``category``, ``tags``, ``text``, ``created_at``)."""
    return make_event("item_upsert", item_id=item_id, **fields)


def item_delete(item_id: str, **fields: Any) -> dict:
    """Remove ``item_id`` from the catalogue (it stops being recommended)."""
    return make_event("item_delete", item_id=item_id, **fields)
