"""When the stream engine counts itself behind the stream (and sheds load): no broker needed."""

from freshrec.agents.stream_worker import is_behind
from freshrec.settings import Settings


def test_a_full_batch_is_behind_whatever_its_age():
    s = Settings(batch_max=100, behind_lag_ms=500)
    assert is_behind(s, 100, oldest_ms=10_000, now_ms=10_000)
    assert not is_behind(s, 99, oldest_ms=10_000, now_ms=10_000)


def test_a_short_batch_of_old_messages_is_behind():
    s = Settings(batch_max=100, behind_lag_ms=500)
    assert is_behind(s, 5, oldest_ms=10_000, now_ms=10_501)
    assert not is_behind(s, 5, oldest_ms=10_000, now_ms=10_500)
    assert not is_behind(s, 5, oldest_ms=None, now_ms=10_501)  # no timestamps: fullness only


def test_the_age_rule_can_be_turned_off():
    s = Settings(batch_max=100, behind_lag_ms=0)
    assert not is_behind(s, 5, oldest_ms=0, now_ms=10**12)


def test_checkpoints_come_less_often_while_the_worker_is_overloaded():
    from freshrec.agents.stream_worker import CHECKPOINT_OVERLOAD_FACTOR, checkpoint_due_s

    s = Settings(checkpoint_interval_s=30.0)
    assert checkpoint_due_s(s, overloaded=False) == 30.0
    assert checkpoint_due_s(s, overloaded=True) == 30.0 * CHECKPOINT_OVERLOAD_FACTOR > 30.0
