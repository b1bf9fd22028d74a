import numpy as np

from freshrec.state.online_metrics import OnlineClickMetrics


def test_auc_and_logloss_match_their_definitions_over_the_window():
    rng = np.random.default_rng(0)
    m = OnlineClickMetrics(window=1000)
    assert m.auc() is None and m.logloss() is None
    y = rng.random(3000) < 0.2
    p = np.clip(0.2 + 0.3 * (y - 0.2) + rng.normal(0, 0.15, 3000), 0.01, 0.99)
    m.observe(p[:1500], y[:1500])
    m.observe(p[1500:], y[1500:])
    pw, yw = p[-1000:], y[-1000:]  # only the last window counts
    pos, neg = pw[yw], pw[~yw]
    brute = np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg])
    assert abs(m.auc() - brute) < 1e-9
    expected = -np.mean(yw * np.log(pw) + (1 - yw) * np.log(1 - pw))
    assert abs(m.logloss() - expected) < 1e-9
    assert m.snapshot()["click_pairs"] == 1000


def test_random_scores_have_auc_near_one_half():
    rng = np.random.default_rng(1)
    m = OnlineClickMetrics(window=20000)
    m.observe(rng.random(20000), rng.random(20000) < 0.1)
    assert 0.47 < m.auc() < 0.53
