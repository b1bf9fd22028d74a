"""Growable numpy arrays: the capacity doubling every row-indexed table here uses."""

from __future__ import annotations

import numpy as np


def grown(arr: np.ndarray, need: int, fill: float = 0.0, minimum: int = 16) -> np.ndarray:
    """``arr`` with room for at least ``need`` rows (first axis): itself when it has it, else a
    copy whose capacity doubles (at least ``minimum``), the new rows set to ``fill``."""
    cap = arr.shape[0]
    if need <= cap:
        return arr
    out = np.full((max(need, 2 * cap, minimum), *arr.shape[1:]), fill, dtype=arr.dtype)
    out[:cap] = arr
    return out
