"""Statistics for evaluation: confidence intervals, win rates, rank correlation, pair accuracy.

Pure python + numpy (no torch), so evaluate.py and notebooks can use it on plain lists of scores.
"""

import math

import numpy as np


# mean +- 1.96 * s / sqrt(n),   s = sample standard deviation (ddof=1)
def mean_ci95(xs):
    """(mean, half_width) of a 95% normal-approximation confidence interval.

    n = 1 -> half width 0.0; n = 0 -> (nan, nan).
    """
    xs = np.asarray(list(xs), dtype=np.float64)
    if xs.size == 0:
        return float("nan"), float("nan")
    if xs.size == 1:
        return float(xs[0]), 0.0
    return float(xs.mean()), float(1.96 * xs.std(ddof=1) / math.sqrt(xs.size))


# win_rate = wins / (wins + losses),  tie_rate = ties / n,  tie when |a_i - b_i| <= 1e-9
def win_rate(a, b, tol=1e-9):
    """How often system A beats system B on the same prompts -> (win_rate, tie_rate).

    a, b: per-prompt scores, paired by index. Ties are left out of the win rate (NaN if every
    pair is a tie) and reported separately.
    """
    a, b = np.asarray(list(a), dtype=np.float64), np.asarray(list(b), dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"win_rate needs paired scores, got {a.size} and {b.size}")
    if a.size == 0:
        return float("nan"), float("nan")
    diff = a - b
    ties = np.abs(diff) <= tol
    wins, losses = int(((diff > 0) & ~ties).sum()), int(((diff < 0) & ~ties).sum())
    rate = wins / (wins + losses) if wins + losses > 0 else float("nan")
    return rate, float(ties.sum()) / a.size


def _average_ranks(x):
    """Ranks 1..n of x, tied values sharing the mean of the ranks they span."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and x[order[j + 1]] == x[order[i]]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1   # positions i..j hold ranks i+1..j+1
        i = j + 1
    return ranks


# rho = Pearson(rank(x), rank(y)),  ties get average ranks
def spearman(x, y):
    """Spearman rank correlation; NaN when fewer than 2 points or either side is constant."""
    x, y = list(x), list(y)
    if len(x) != len(y):
        raise ValueError(f"spearman needs equal lengths, got {len(x)} and {len(y)}")
    if len(x) < 2:
        return float("nan")
    rx, ry = _average_ranks(x), _average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt((rx ** 2).sum() * (ry ** 2).sum())
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


# accuracy = mean_i [r_chosen_i > r_rejected_i]
def pairwise_accuracy(pairs):
    """Fraction of (r_chosen, r_rejected) pairs the reward model orders correctly (ties are wrong).

    NaN for no pairs.
    """
    pairs = list(pairs)
    if not pairs:
        return float("nan")
    return sum(1 for chosen, rejected in pairs if chosen > rejected) / len(pairs)
