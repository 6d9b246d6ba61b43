"""evaluation.py on hand-computed inputs."""

import math

import numpy as np
import pytest

from minigpt.evaluation import (bootstrap_ci95, mean_gain, ranking_report, spearman, win_fraction, win_rate,
                                wrong_cut)


def test_win_rate_hand_computed():
    a = [1.0, 2.0, 3.0, 4.0, 5.0]
    b = [0.0, 2.0, 4.0, 1.0, 5.0 + 1e-12]
    # wins: 1>0, 4>1 (2); losses: 3<4 (1); ties: 2=2, 5~5 within 1e-9 (2)
    rate, ties = win_rate(a, b)
    assert rate == pytest.approx(2 / 3) and ties == pytest.approx(2 / 5)
    assert win_rate(b, a)[0] == pytest.approx(1 / 3)


def test_wrong_cut_hand_computed():
    assert wrong_cut([1, 0, 0, 0], [1, 1, 1, 1]) == 0.75      # 1 wrong answer where there were 4
    assert wrong_cut([1, 1, 0], [1, 0, 0]) == -1.0            # twice as many: a negative cut
    assert math.isnan(wrong_cut([1, 0], [0, 0]))              # nothing to cut


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
    # ranking 1 (best..worst) scored [2, 1, 1]: (0,1) right, (0,2) right, (1,2) tie = 1/2;
    # ranking 2 [0, 3]: wrong
    rep = ranking_report([{"responses": ["a", "b", "c"]}, {"responses": ["d", "e"]}],
                         [[2.0, 1.0, 1.0], [0.0, 3.0]])
    assert rep == {"accuracy": 2.5 / 4}


def test_spearman_within_prompt_leaves_each_prompts_offset_free():
    records = [{"responses": list("abc"), "gold": [1.0, 0.5, 0.0]},     # labelled in gold's order
               {"responses": list("de"), "gold": [0.6, 0.9]},            # the labeller swapped these two
               {"responses": list("fg"), "gold": [0.5, 0.5]}]            # all alike: no Spearman, left out
    rewards = [[10.0, 11.0, 9.0], [-6.0, -5.0], [1.0, 2.0]]
    rep = ranking_report(records, rewards)
    # ranking 1: reward ranks (2, 3, 1) against gold ranks (3, 2, 1): centred (0, 1, -1) . (1, 0, -1) / 2
    # = 1/2; ranking 2: -6 < -5 and 0.6 < 0.9, rho = 1; mean (1/2 + 1) / 2, whatever the offsets 10 and -5
    # between them
    assert rep["spearman_within_prompt"] == pytest.approx(0.75)
    assert rep["labels_spearman_within_prompt"] == pytest.approx((1.0 - 1.0) / 2)
    shifted = ranking_report(records, [[x - 100.0 * k for x in r] for k, r in enumerate(rewards)])
    assert shifted["spearman_within_prompt"] == rep["spearman_within_prompt"]
    assert shifted["spearman"] != rep["spearman"]              # the global number moves with the offsets
    assert math.isnan(ranking_report(records[2:], rewards[2:])["spearman_within_prompt"])


def test_best_of_n_kl_by_hand_and_its_limits():
    from minigpt.evaluation import best_of_n_kl, best_of_n_kl_bound
    # two equally likely responses, best of 2: q = (1/4, 3/4) against p = (1/2, 1/2)
    assert best_of_n_kl([0.3, 0.9], 2) == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5))
    assert best_of_n_kl([0.5] * 16, 4) == 0.0                              # one answer: nothing to choose
    assert best_of_n_kl([1.0, 2.0, 3.0], 1) == pytest.approx(0.0)           # best of 1 is the policy itself
    # the same text sampled twice is one response with twice the mass: [a, a, b] is p = (2/3, 1/3)
    q_b = 1 - (2 / 3) ** 2
    assert best_of_n_kl([1.0, 1.0, 2.0], 2) == pytest.approx((1 - q_b) * math.log((1 - q_b) / (2 / 3))
                                                             + q_b * math.log(q_b / (1 / 3)))
    # all distinct: tends to the bound log n - (n-1)/n from below; repeats lower it
    assert best_of_n_kl(range(20_000), 4) == pytest.approx(best_of_n_kl_bound(4), abs=1e-4)
    assert best_of_n_kl([0, 0, 0, 1, 1, 2, 3, 3], 4) < best_of_n_kl(range(8), 4) < best_of_n_kl_bound(4)


def test_best_of_n_expectation_by_hand():
    from minigpt.evaluation import best_of_n_expectation
    # m = 3, n = 2: subsets {a,b} {a,c} {b,c} pick b, c, c  ->  RM (2 + 3 + 3)/3, gold (0.5 + 1 + 1)/3
    assert best_of_n_expectation([1.0, 2.0, 3.0], [0.0, 0.5, 1.0], 2) == \
        pytest.approx((8 / 3, 2.5 / 3), abs=1e-12)
    # a tie at the top: {a,b} picks a or b (gold 1 or 0, on average 1/2); {a,c}: a; {b,c}: b
    #     ->  gold (0.5 + 1 + 0)/3
    assert best_of_n_expectation([1.0, 1.0, 0.0], [1.0, 0.0, 0.3], 2) == pytest.approx((1.0, 0.5), abs=1e-12)


def test_gao_fits_by_hand():
    from minigpt.evaluation import fit_best_of_n, fit_rl, gao_best_of_n, gao_rl
    # R(1) = α − β, R(2) = 2α − 4β  with α = 0.3, β = 0.1: 0.2 and 0.2;
    # two points determine (α, β)
    assert list(gao_best_of_n([1.0, 2.0], 0.3, 0.1)) == pytest.approx([0.2, 0.2])
    assert fit_best_of_n([1.0, 2.0], [0.2, 0.2]) == pytest.approx((0.3, 0.1))
    # RL: R(1) = α, R(e) = e (α − β)
    assert fit_rl([1.0, math.e], [0.3, math.e * 0.2]) == pytest.approx((0.3, 0.1))
    assert gao_rl(math.e, 0.3, 0.1) == pytest.approx(math.e * 0.2)


# ---- bootstrap over prompts --------------------------------------------------------------------------------

def test_bootstrap_matches_a_slow_reference():
    """The same draws written out as loops: resample prompt columns, keep every answer of a drawn prompt."""
    rng = np.random.default_rng(3)
    a, b = rng.random((4, 30)), rng.random((4, 30))
    lo, hi = bootstrap_ci95(mean_gain, a, b, n_boot=200, seed=7)
    draws = np.random.default_rng(7).integers(0, 30, size=(200, 30))
    values = []
    for cols in draws:
        diffs = [a[s][p] - b[s][p] for p in cols for s in range(4)]
        values.append(sum(diffs) / len(diffs))
    assert (lo, hi) == pytest.approx((np.percentile(values, 2.5), np.percentile(values, 97.5)), abs=1e-12)


def test_bootstrap_counts_prompts_not_answers():
    """Four identical answers per prompt carry one prompt's worth of information: the interval is exactly
    the one of a single answer per prompt (an interval over 4·P independent answers would be half as
    wide)."""
    x = np.random.default_rng(0).random((1, 50))
    assert bootstrap_ci95(lambda s: s.mean(), np.repeat(x, 4, axis=0)) == \
        pytest.approx(bootstrap_ci95(lambda s: s.mean(), x))
    assert bootstrap_ci95(mean_gain, x + 0.25, x) == pytest.approx((0.25, 0.25))  # a constant gain is certain


def test_win_fraction_leaves_ties_out():
    a, b = np.array([[1.0, 0.5, 0.0, 1.0]]), np.array([[0.0, 0.5, 1.0, 0.0]])
    assert win_fraction(a, b) == pytest.approx(2 / 3)                               # 2 wins, 1 loss, 1 tie
    assert math.isnan(win_fraction(a[:, 1:2], b[:, 1:2]))
    assert mean_gain(a, b) == pytest.approx(0.25)                                    # (1 + 0 - 1 + 1) / 4
