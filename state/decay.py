"""Exponential time decay in event time, exact under out-of-order arrival.

A decayed quantity is stored as ``(value, t0)``: ``value`` expressed at the row's reference time
``t0`` (epoch ms). Adding weight ``w`` observed at event time ``t`` adds ``w * 2**((t - t0) / h)``,
which is commutative: the same events in any order give the same value. Reading at time ``now``
multiplies by ``2**((t0 - now) / h)``. When the exponent grows large the row is rebased so floats
stay bounded. No per-update rescaling of every entry is needed (co-visitation rows hold hundreds).
"""

from __future__ import annotations

from typing import MutableMapping

REBASE_EXPONENT = 40.0  # 2**40 ~ 1e12: rebase long before float precision matters


def growth(t_ms: float, t0_ms: float, half_life_ms: float) -> float:
    """Factor that expresses a weight seen at ``t_ms`` in units of reference time ``t0_ms``."""
    return 2.0 ** ((t_ms - t0_ms) / half_life_ms)


def add_scalar(row: MutableMapping, key: str, weight: float, t_ms: int, half_life_ms: float) -> None:
    """Add ``weight`` at event time ``t_ms`` to the decayed scalar ``row[key]`` (row holds ``t0``)."""
    t0 = row.setdefault("t0", t_ms)
    exponent = (t_ms - t0) / half_life_ms
    if exponent > REBASE_EXPONENT:
        rebase(row, t_ms, half_life_ms, keys=(key,))
        exponent = 0.0
    row[key] = row.get(key, 0.0) + weight * 2.0**exponent


def rebase(row: MutableMapping, new_t0: int, half_life_ms: float, keys: tuple[str, ...] = (),
           maps: tuple[str, ...] = ()) -> None:
    """Re-express the row's decayed scalars ``keys`` and maps ``maps`` at reference ``new_t0``."""
    factor = growth(row.get("t0", new_t0), new_t0, half_life_ms)
    for key in keys:
        if key in row:
            row[key] *= factor
    for name in maps:
        entries = row.get(name)
        if entries:
            for k in entries:
                entries[k] *= factor
    row["t0"] = new_t0


def value_at(value: float, t0_ms: float, now_ms: float, half_life_ms: float) -> float:
    """The decayed value at time ``now_ms`` of ``value`` stored at reference ``t0_ms``."""
    return value * 2.0 ** ((t0_ms - now_ms) / half_life_ms)
