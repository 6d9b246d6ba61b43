"""Statistics for evaluation: confidence intervals, win rates, rank correlation, accuracy on rankings.

Pure python + numpy (no torch), so evaluate.py and notebooks can use it on plain lists of scores.
"""

import math
from itertools import combinations

import numpy as np


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


# Percentile bootstrap over prompts. Each model answers every prompt S times, and a prompt's answers are alike
# (an easy prompt is easy for all of them), so the S·P answers are not S·P independent draws: resampling
# whole prompts (columns) keeps each prompt's answers together. For b = 1..B: draw P prompt indices with
# replacement, compute the statistic on those columns; the interval is the 2.5th and 97.5th percentiles
# of the B values.
def bootstrap_ci95(statistic, *scores, n_boot=2000, seed=0):
    """95% interval of statistic(*scores) when prompts are resampled -> (low, high).

    scores: arrays (S, P), answer s of prompt p at [s, p], paired across arrays (the same prompt, the same
    answer number). statistic takes arrays of the same shape, with the resampled prompts as columns, and
    returns a float (NaN values, e.g. a win rate with no decisive pair, are left out of the percentiles)."""
    scores = [np.asarray(x, dtype=np.float64) for x in scores]
    P = scores[0].shape[1]
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, P, size=(n_boot, P))   # (B, P): each row, P prompt indices
    values = np.array([statistic(*(x[:, cols] for x in scores)) for cols in draws])
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def mean_gain(a, b):
    """Paired gain of A over B: the mean of a − b over every answer."""
    return float(np.mean(np.asarray(a) - np.asarray(b)))


def win_fraction(a, b, tol=1e-9):
    """wins / (wins + losses) of A over B, answer by answer, ties left out (NaN if every pair is a tie)."""
    return win_rate(np.ravel(a), np.ravel(b), tol)[0]


# cut = 1 − (wrong answers of A) / (wrong answers of B), the same prompts and answer numbers
def wrong_cut(a, b):
    """How much A cuts B's wrong answers: a, b are 0/1 arrays (1 = a wrong answer), paired -> float in
    (−inf, 1]; 0.5 = half as many; NaN when B has none."""
    wrong_b = float(np.sum(b))
    return 1.0 - float(np.sum(a)) / wrong_b if wrong_b > 0 else float("nan")


# KL(best-of-n || π) ≤ log n − (n−1)/n,  equality when no two samples have the same score
# (Gao et al. 2022)
def best_of_n_kl_bound(n):
    return math.log(n) - (n - 1) / n


# On the empirical distribution of m samples y_1..y_m of π with scores r(y_i):
#     p(s) = share of samples scoring s,  F(s) = share scoring ≤ s,  F⁻(s) = share scoring < s;
#     best-of-n takes a score s with q(s) = F(s)^n − F⁻(s)^n;
# KL = Σ_s q(s) · log(q(s) / p(s))      (responses of equal score are exchangeable, so scores are enough)
def best_of_n_kl(scores, n):
    """KL of best-of-n to its base policy, estimated from one prompt's samples and their scores.

    Short answers repeat (the same text, so the same score): then the policy has less to choose from and
    best-of-n moves less than the bound says. All scores equal -> 0; all distinct, m -> inf -> the bound."""
    values, counts = np.unique(np.asarray(list(scores), dtype=np.float64), return_counts=True)   # ascending
    p = counts / counts.sum()
    F = np.cumsum(p)
    q = F ** n - (F - p) ** n
    return float(np.sum(np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0) / p), 0.0)))


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


def _nanmean(values):
    """Mean of the defined values (a ranking whose gold scores are all equal has no Spearman); NaN if none."""
    defined = [v for v in values if not math.isnan(v)]
    return sum(defined) / len(defined) if defined else float("nan")


# accuracy = mean over pairs (i above j in a ranking) of [r_i > r_j], a tie counting 1/2
def ranking_report(records, rewards):
    """How well scores order ranked responses. records: {"responses": best..worst, optional "gold",
    "mistakes", "sources"} (label.py's format); rewards: one list of floats per record, in the same order.

    accuracy        pairs ordered like the labels
    gold_accuracy   pairs of different gold score ordered like gold; ceiling: how often the labels do so
    per_mistake     gold_accuracy by the worse response's mistake;  on_policy: between two policy samples
    spearman        rank correlation of every score with its gold score, across all prompts
    spearman_within_prompt   the same within each ranking, averaged over rankings: what comparisons can teach
                    (a pairwise loss never sees one prompt's rewards beside another's, so it leaves each
                    prompt's offset free, which the global number counts against it)
    labels_spearman_within_prompt   the same for the labeller's order (best first), its yardstick
    """
    def credit(a, b):   # an untrained model that scores everything alike gets 1/2, not 0
        return 1.0 if a > b else 0.5 if a == b else 0.0

    hits = [credit(r[i], r[j]) for r in rewards for i, j in combinations(range(len(r)), 2)]
    out = {"accuracy": sum(hits) / max(len(hits), 1)}
    # the gold numbers: over the rankings that have gold scores (a file of typed prompts mixed in has none)
    graded = [(rec, r) for rec, r in zip(records, rewards) if "gold" in rec]
    if not graded:
        return out
    records, rewards = zip(*graded)
    gold_hits, per_mistake, ceiling, on_policy = [], {}, [], []
    for rec, r in zip(records, rewards):
        g = rec["gold"]
        mistakes = rec.get("mistakes") or [None] * len(g)
        sources = rec.get("sources") or [None] * len(g)
        for i, j in combinations(range(len(g)), 2):
            if g[i] == g[j]:
                continue
            ceiling.append(g[i] > g[j])                        # label order agrees with gold
            win, lose = (i, j) if g[i] > g[j] else (j, i)
            hit = credit(r[win], r[lose])                       # the scores order the pair like gold
            gold_hits.append(hit)
            per_mistake.setdefault(mistakes[lose] or "none", []).append(hit)
            if sources[i] == sources[j] == "policy":            # two of the policy's samples: what PPO sees
                on_policy.append(hit)
    xs = [x for r in rewards for x in r]
    gs = [g for rec in records for g in rec["gold"]]
    within = [spearman(r, rec["gold"]) for rec, r in zip(records, rewards)]
    by_labels = [spearman(range(len(rec["gold"]), 0, -1), rec["gold"]) for rec in records]   # best first
    out.update({
        "gold_accuracy": sum(gold_hits) / max(len(gold_hits), 1),
        "ceiling": sum(ceiling) / max(len(ceiling), 1),
        "spearman": spearman(xs, gs),
        "spearman_within_prompt": _nanmean(within),
        "labels_spearman_within_prompt": _nanmean(by_labels),
        "per_mistake_accuracy": {k: sum(v) / len(v) for k, v in sorted(per_mistake.items())},
        "per_mistake_pairs": {k: len(v) for k, v in sorted(per_mistake.items())},
        "on_policy_gold_accuracy": sum(on_policy) / len(on_policy) if on_policy else None,
        "on_policy_pairs": len(on_policy),
        "rewards": xs, "golds": gs,
        "mistakes": [m or "none" for rec in records
                     for m in (rec.get("mistakes") or [None] * len(rec["gold"]))],
    })
    return out


# ---- over-optimisation (Gao, Schulman, Hilton 2022): best-of-n from a fixed pool of samples, the fits ----

# The max-RM sample of a uniformly random n-subset of one prompt's m samples, in expectation, exactly.
# Sort the samples by RM score and group equal scores into classes: a class of c samples of score v with L
# samples scoring strictly less holds the subset's maximum with probability
#     w = [C(L+c, n) − C(L, n)] / C(m, n)
#         (the subsets inside the L+c lowest, minus those inside the L lowest)
# (all scores distinct, c = 1: the k-th smallest is the maximum with probability C(k−1, n−1) / C(m, n)).
# Ties are broken uniformly at random (argmax over samples drawn in random order does that); the tied samples
# in the subset are a random subset of their class, so the pick is, on average, the class's mean gold:
#     E[RM] = Σ_classes w · v,      E[gold] = Σ_classes w · mean(gold of the class)
def best_of_n_expectation(rm_scores, gold_scores, n):
    """Expected (RM score, gold score) of best-of-n by RM score, n drawn without replacement from one prompt's
    m samples; every n-subset equally likely. n = 1: the means; n = m: the max-RM sample (its class's mean
    gold)."""
    rm = np.asarray(list(rm_scores), dtype=np.float64)                       # (m,)
    gold = np.asarray(list(gold_scores), dtype=np.float64)                   # (m,)
    m = rm.size
    if gold.size != m:
        raise ValueError(f"best_of_n_expectation needs paired scores, got {m} and {gold.size}")
    if not 1 <= n <= m:
        raise ValueError(f"best_of_n_expectation: n must be in 1..{m}, got {n}")
    values, inverse, counts = np.unique(rm, return_inverse=True, return_counts=True)   # classes, ascending
    class_gold = np.bincount(inverse, weights=gold) / counts                 # (classes,) mean gold per class
    below = np.concatenate([[0], np.cumsum(counts)[:-1]])                    # L per class
    total = math.comb(m, n)
    w = np.array([(math.comb(int(L + c), n) - math.comb(int(L), n)) / total for L, c in zip(below, counts)])
    return float(w @ values), float(w @ class_gold)


# Gao et al. (2022), d = √KL(π || π_init):
#     best-of-n  R(d) = d (α − β d),   RL  R(d) = d (α − β log d)
def gao_best_of_n(d, alpha, beta):
    d = np.asarray(d, dtype=np.float64)
    return d * (alpha - beta * d)


def gao_rl(d, alpha, beta):
    d = np.asarray(d, dtype=np.float64)
    return d * (alpha - beta * np.log(np.where(d > 0, d, 1.0)))             # R(0) = 0 (d log d -> 0)


# Both forms are linear in (α, β): least squares  min Σ_i (R_i − α·x_i + β·y_i)²  with
#     best-of-n  x = d, y = d²          RL  x = d, y = d·log d
# (RL: points with d > 0 only; d = 0 adds nothing)
def _fit_linear(x, y, gain):
    A = np.stack([x, -y], axis=1)                                            # (points, 2)
    if len(gain) < 2 or np.linalg.matrix_rank(A) < 2:
        return float("nan"), float("nan")                                    # too few distinct points to fit
    (alpha, beta), *_ = np.linalg.lstsq(A, gain, rcond=None)
    return float(alpha), float(beta)


def fit_best_of_n(d, gain):
    """(α, β) of R(d) = d (α − β d) fitted to gains R_i (score − score at d = 0) at d_i = √KL;
    NaN if fewer than 2 points."""
    d, gain = np.asarray(d, dtype=np.float64), np.asarray(gain, dtype=np.float64)
    return _fit_linear(d, d * d, gain)


def fit_rl(d, gain):
    """(α, β) of R(d) = d (α − β log d) fitted to the points with d > 0;
    NaN if fewer than 2 distinct ones."""
    d, gain = np.asarray(d, dtype=np.float64), np.asarray(gain, dtype=np.float64)
    keep = d > 0
    d, gain = d[keep], gain[keep]
    return _fit_linear(d, d * np.log(d), gain)
