import itertools
import random

import pytest

from freshrec.state.covisitation import add_pairs, new_covis_row
from freshrec.state.decay import add_scalar, value_at

H = 3_600_000.0


def test_order_of_arrival_does_not_change_the_decayed_value():
    events = [(1.0, 0), (2.0, 3_600_000), (0.5, 7_200_000), (1.5, 1_800_000)]
    values = set()
    for perm in itertools.permutations(events):
        row: dict = {}
        for w, t in perm:
            add_scalar(row, "pop", w, t, H)
        values.add(round(value_at(row["pop"], row["t0"], 7_200_000, H), 9))
    assert len(values) == 1
    # 1*2^-2 + 2*2^-1 + 0.5 + 1.5*2^-1.5
    assert values.pop() == pytest.approx(0.25 + 1.0 + 0.5 + 1.5 * 2 ** -1.5)


def test_half_life_halves_the_value():
    row: dict = {}
    add_scalar(row, "pop", 8.0, 0, H)
    assert value_at(row["pop"], row["t0"], 2 * H, H) == pytest.approx(2.0)


def test_rebase_keeps_values_exact_over_many_half_lives():
    row = new_covis_row()
    rng = random.Random(1)
    t = 0
    expected = 0.0
    for _ in range(200):
        t += int(H)  # 200 half-lives: forces rebases
        add_pairs(row, [("a", 1.0)], t, H, max_neighbors=10)
        expected = expected / 2 + 1.0
    assert value_at(row["n"]["a"], row["t0"], t, H) == pytest.approx(expected)
    assert row["t0"] > 0  # rebased at least once
    assert rng  # deterministic
