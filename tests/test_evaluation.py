"""evaluation.py on hand-computed inputs."""

import math

import pytest

from minigpt.evaluation import mean_ci95, ranking_report, spearman, win_rate


def test_mean_ci95_hand_computed():
    # [1..5]: mean 3; s^2 = (4+1+0+1+4)/4 = 2.5; half width = 1.96 * sqrt(2.5) / sqrt(5) = 1.96 * 0.70711
    mean, half = mean_ci95([1, 2, 3, 4, 5])
    assert mean == 3.0
    assert half == pytest.approx(1.96 * math.sqrt(0.5))


def test_mean_ci95_edge_cases():
    assert mean_ci95([7.5]) == (7.5, 0.0)
    mean, half = mean_ci95([])
    assert math.isnan(mean) and math.isnan(half)
    assert mean_ci95(x for x in [2.0, 2.0]) == (2.0, 0.0)   # any iterable; no spread -> width 0


def test_win_rate_hand_computed():
    a = [1.0, 2.0, 3.0, 4.0, 5.0]
    b = [0.0, 2.0, 4.0, 1.0, 5.0 + 1e-12]
    # wins: 1>0, 4>1 (2); losses: 3<4 (1); ties: 2=2, 5~5 within 1e-9 (2)
    rate, ties = win_rate(a, b)
    assert rate == pytest.approx(2 / 3) and ties == pytest.approx(2 / 5)
    assert win_rate(b, a)[0] == pytest.approx(1 / 3)


def test_win_rate_all_ties_and_mismatch():
    rate, ties = win_rate([1.0, 2.0], [1.0, 2.0])
    assert math.isnan(rate) and ties == 1.0
    with pytest.raises(ValueError):
        win_rate([1.0], [1.0, 2.0])


def test_spearman_hand_computed():
    # ranks differ by d = [0, 1, 1, 0]: rho = 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 12/60 = 0.8
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert spearman([1, 2, 3, 4], [10, 100, 1000, 10000]) == pytest.approx(1.0)   # only order matters
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_spearman_ties_use_average_ranks():
    # x = [1, 2, 2, 3] -> ranks [1, 2.5, 2.5, 4]; y ranks [1, 2, 3, 4]
    # centred: rx = [-1.5, 0, 0, 1.5], ry = [-1.5, -0.5, 0.5, 1.5]
    # rho = (2.25 + 2.25) / sqrt(4.5 * 5) = 4.5 / sqrt(22.5) = 0.948683
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))         # constant side: undefined
    assert math.isnan(spearman([1], [2]))


def test_ranking_report_counts_pairs_of_each_ranking_ties_as_half():
    # ranking 1 (best..worst) scored [2, 1, 1]: (0,1) right, (0,2) right, (1,2) tie = 1/2;  ranking 2 [0, 3]: wrong
    rep = ranking_report([{"responses": ["a", "b", "c"]}, {"responses": ["d", "e"]}], [[2.0, 1.0, 1.0], [0.0, 3.0]])
    assert rep == {"accuracy": 2.5 / 4}
