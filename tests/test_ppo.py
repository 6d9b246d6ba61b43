"""ppo.py against slow, obviously-correct references: python loops, numpy, and hand arithmetic."""

import math

import numpy as np
import pytest
import torch

from minigpt.ppo import (AdaptiveKLController, FixedKLController, entropy_from_logits, explained_variance,
                         gae, group_advantages, k3_kl, kl_penalty_rewards, masked_mean, masked_var,
                         masked_whiten, policy_loss, rloo_advantages, value_loss)


def ragged_mask(lengths, N):
    """Right-padded 0/1 mask (B, N) with lengths[b] ones in row b."""
    return (torch.arange(N)[None, :] < torch.tensor(lengths)[:, None]).long()


def with_garbage(x, mask):
    """x with every pad position replaced by huge / infinite / NaN values."""
    junk = torch.tensor([1e30, -float("inf"), float("nan"), float("inf"), -1e30], dtype=x.dtype)
    junk = junk.repeat(x.numel() // 5 + 1)[: x.numel()].view_as(x)
    return torch.where(mask.bool(), x, junk)


LENGTHS, N = [5, 1, 3, 4], 5
MASK = ragged_mask(LENGTHS, N)


# --- masked statistics --------------------------------------------------------------------------

def test_masked_mean_and_var_match_numpy_on_real_entries():
    x = torch.randn(4, N, dtype=torch.float64)
    real = x[MASK.bool()].numpy()
    assert masked_mean(x, MASK).item() == pytest.approx(real.mean())
    assert masked_var(x, MASK).item() == pytest.approx(real.var(ddof=1))
    assert masked_var(x, MASK, unbiased=False).item() == pytest.approx(real.var(ddof=0))
    row_means = masked_mean(x, MASK, dim=1)
    for b, n in enumerate(LENGTHS):
        assert row_means[b].item() == pytest.approx(x[b, :n].mean().item())


def test_masked_whiten_mean0_var1_pads_zero():
    x = 3.0 + 5.0 * torch.randn(4, N, dtype=torch.float64)
    w = masked_whiten(with_garbage(x, MASK), MASK)
    real = x[MASK.bool()].numpy()
    expected = (real - real.mean()) / np.sqrt(real.var(ddof=1) + 1e-8)
    np.testing.assert_allclose(w[MASK.bool()].numpy(), expected, atol=1e-9)
    assert (w[~MASK.bool()] == 0).all()
    assert masked_mean(w, MASK).item() == pytest.approx(0.0, abs=1e-9)
    assert masked_var(w, MASK).item() == pytest.approx(1.0, abs=1e-6)


# --- KL-penalised rewards -----------------------------------------------------------------------

def test_kl_penalty_rewards_hand_computed():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5]])
    ref_logprobs = torch.tensor([[-1.5, -2.0, -1.0]])
    # kl = logp - ref = [0.5, 0, 0.5]; rewards = -0.1 * kl + [0, 0, 2] = [-0.05, 0, 1.95]
    rewards, kl = kl_penalty_rewards(logprobs, ref_logprobs, torch.tensor([2.0]), torch.ones(1, 3), 0.1)
    torch.testing.assert_close(kl, torch.tensor([[0.5, 0.0, 0.5]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.0, 1.95]]))


def test_kl_penalty_zero_when_policy_is_reference_score_on_last_real_token():
    logprobs = torch.randn(4, N)
    score = torch.tensor([1.0, -2.0, 3.0, 0.5])
    rewards, kl = kl_penalty_rewards(logprobs, logprobs.clone(), score, MASK, kl_coef=0.2)
    expected = torch.zeros(4, N)
    for b, n in enumerate(LENGTHS):
        expected[b, n - 1] = score[b]                       # last real token: index length-1
    assert (kl == 0).all()
    torch.testing.assert_close(rewards, expected)


def test_kl_penalty_ignores_pads():
    logprobs, ref = torch.randn(4, N), torch.randn(4, N)
    score = torch.randn(4)
    r1, kl1 = kl_penalty_rewards(logprobs, ref, score, MASK, 0.05)
    r2, kl2 = kl_penalty_rewards(with_garbage(logprobs, MASK), with_garbage(ref, MASK), score, MASK, 0.05)
    torch.testing.assert_close(r1, r2)
    torch.testing.assert_close(kl1, kl2)
    assert (r1[~MASK.bool()] == 0).all() and (kl1[~MASK.bool()] == 0).all()


# --- GAE ----------------------------------------------------------------------------------------

def gae_reference(rewards, values, lengths, gamma, lam):
    """Backwards loop per row over its real tokens, in plain python floats."""
    B, N = len(rewards), len(rewards[0])
    adv, ret = [[0.0] * N for _ in range(B)], [[0.0] * N for _ in range(B)]
    for b in range(B):
        next_value, next_adv = 0.0, 0.0
        for t in reversed(range(lengths[b])):
            delta = rewards[b][t] + gamma * next_value - values[b][t]
            adv[b][t] = delta + gamma * lam * next_adv
            ret[b][t] = adv[b][t] + values[b][t]
            next_value, next_adv = values[b][t], adv[b][t]
    return adv, ret


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)])
def test_gae_matches_python_loop(gamma, lam):
    g = torch.Generator().manual_seed(0)
    lengths, N = [7, 1, 4, 7, 2, 6], 7
    mask = ragged_mask(lengths, N)
    rewards = torch.randn(6, N, generator=g, dtype=torch.float64)
    values = torch.randn(6, N, generator=g, dtype=torch.float64)
    adv, ret = gae(with_garbage(rewards, mask), with_garbage(values, mask), mask, gamma, lam)
    ref_adv, ref_ret = gae_reference(rewards.tolist(), values.tolist(), lengths, gamma, lam)
    np.testing.assert_allclose(adv.numpy(), ref_adv, atol=1e-6)
    np.testing.assert_allclose(ret.numpy(), ref_ret, atol=1e-6)
    assert (adv[~mask.bool()] == 0).all() and (ret[~mask.bool()] == 0).all()


def test_gae_hand_computed():
    # r = [0, 0, 1], V = [0.5, 0.5, 0.5], gamma = 1, lam = 0.5
    # t=2: delta = 1 + 0 - 0.5 = 0.5          A = 0.5
    # t=1: delta = 0 + 0.5 - 0.5 = 0           A = 0 + 0.5 * 0.5  = 0.25
    # t=0: delta = 0                           A = 0 + 0.5 * 0.25 = 0.125
    # returns = A + V = [0.625, 0.75, 1.0]
    adv, ret = gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.full((1, 3), 0.5), torch.ones(1, 3), 1.0, 0.5)
    torch.testing.assert_close(adv, torch.tensor([[0.125, 0.25, 0.5]]))
    torch.testing.assert_close(ret, torch.tensor([[0.625, 0.75, 1.0]]))


# --- PPO losses ---------------------------------------------------------------------------------

def test_policy_loss_hand_computed():
    # six real tokens (two rows, row 1 padded), old log-probs 0, so ratio = exp(logprobs), clip 0.2:
    #   ratio  A   -A*r   -A*clip(r)  max    clipped term won?
    #   1.5   +1   -1.5   -1.2        -1.2   yes  (too much of a good thing: capped)
    #   0.5   -1    0.5    0.8         0.8   yes
    #   1.1   +1   -1.1   -1.1        -1.1   no   (inside the range)
    #   0.9   -1    0.9    0.9         0.9   no
    #   1.5   -1    1.5    1.2         1.5   no   (pessimistic: the unclipped loss is larger)
    #   0.5   +1   -0.5   -0.8        -0.5   no
    # loss = (-1.2 + 0.8 - 1.1 + 0.9 + 1.5 - 0.5) / 6 = 0.4 / 6; clipfrac = 2/6
    ratios = torch.tensor([[1.5, 0.5, 1.1, 0.9], [1.5, 0.5, 1.0, 1.0]], dtype=torch.float64)
    advantages = torch.tensor([[1.0, -1.0, 1.0, -1.0], [-1.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    logprobs = ratios.log().requires_grad_()
    old = torch.zeros_like(ratios)
    loss, stats = policy_loss(logprobs, old, advantages, mask, clip=0.2)
    assert loss.item() == pytest.approx(0.4 / 6)
    assert stats["clipfrac"] == pytest.approx(2 / 6)
    assert stats["ratio_mean"] == pytest.approx((1.5 + 0.5 + 1.1 + 0.9 + 1.5 + 0.5) / 6)
    logs = [math.log(r) for r in (1.5, 0.5, 1.1, 0.9, 1.5, 0.5)]
    assert stats["approx_kl"] == pytest.approx(0.5 * sum(v * v for v in logs) / 6)
    # d loss / d logp = -A * ratio / 6 where the unclipped term won, 0 where the clip won or pads
    loss.backward()
    expected_grad = torch.tensor([[0.0, 0.0, -1.1, 0.9], [1.5, -0.5, 0.0, 0.0]], dtype=torch.float64) / 6
    torch.testing.assert_close(logprobs.grad, expected_grad)


def test_policy_loss_first_step_ratio_exactly_one():
    logprobs = torch.randn(4, N)
    advantages = torch.randn(4, N)
    loss, stats = policy_loss(logprobs, logprobs.clone(), advantages, MASK)
    assert stats == {"clipfrac": 0.0, "approx_kl": 0.0, "ratio_mean": 1.0}
    assert loss.item() == pytest.approx(-masked_mean(advantages, MASK).item(), abs=1e-6)


def test_value_loss_hand_computed():
    # old V = 0, clip 0.2:
    #   V     R    V_clip  (V-R)^2  (V_clip-R)^2  max   clipped larger?
    #   0.5   1    0.2     0.25     0.64          0.64  yes
    #   0.1   0    0.1     0.01     0.01          0.01  no
    #  -0.5   0   -0.2     0.25     0.04          0.25  no
    # loss = 0.5 * (0.64 + 0.01 + 0.25) / 3 = 0.15; vf_clipfrac = 1/3
    values = torch.tensor([[0.5, 0.1, -0.5, 0.0]], dtype=torch.float64)
    returns = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, vf_clipfrac = value_loss(values, torch.zeros_like(values), returns, mask, clip=0.2)
    assert loss.item() == pytest.approx(0.15)
    assert vf_clipfrac == pytest.approx(1 / 3)


def test_entropy_from_logits():
    V = 6
    uniform = torch.zeros(2, 3, V)
    assert entropy_from_logits(uniform, torch.ones(2, 3)).item() == pytest.approx(math.log(V))
    logits = torch.randn(2, 3, V, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    entropies = []
    for b, t in [(0, 0), (0, 1), (1, 0)]:
        p = torch.softmax(logits[b, t], -1).tolist()
        entropies.append(-sum(pi * math.log(pi) for pi in p))
    assert entropy_from_logits(logits, mask).item() == pytest.approx(sum(entropies) / 3, abs=1e-6)


def test_explained_variance():
    returns = torch.randn(4, N, dtype=torch.float64)
    assert explained_variance(returns.clone(), returns, MASK) == pytest.approx(1.0)
    constant = torch.full_like(returns, 3.0)                # a constant explains nothing
    assert explained_variance(constant, returns, MASK) == pytest.approx(0.0, abs=1e-9)
    values = torch.randn(4, N, dtype=torch.float64)
    r, v = returns[MASK.bool()].numpy(), values[MASK.bool()].numpy()
    assert explained_variance(values, returns, MASK) == pytest.approx(1 - np.var(r - v) / np.var(r))


def test_padding_contributes_nothing_anywhere():
    g = torch.Generator().manual_seed(3)
    B, V = 4, 9
    logprobs, old, ref, adv, values, old_values, returns, rewards = (
        torch.randn(B, N, generator=g, dtype=torch.float64) for _ in range(8))
    logits = torch.randn(B, N, V, generator=g, dtype=torch.float64)
    score = torch.randn(B, generator=g, dtype=torch.float64)

    def everything(lp, ol, rf, ad, va, ov, re, rw, lg):
        lp, va = lp.clone().requires_grad_(), va.clone().requires_grad_()
        pl, pstats = policy_loss(lp, ol, ad, MASK)
        vl, vclip = value_loss(va, ov, re, MASK)
        (pl + vl).backward()
        assert torch.isfinite(lp.grad).all() and torch.isfinite(va.grad).all()
        assert (lp.grad[~MASK.bool()] == 0).all() and (va.grad[~MASK.bool()] == 0).all()
        kr, kl = kl_penalty_rewards(lp.detach(), rf, score, MASK, 0.1)
        a, r = gae(rw, va.detach(), MASK)
        return [pl.item(), *pstats.values(), vl.item(), vclip, kr, kl, a, r, masked_whiten(ad, MASK),
                masked_mean(rw, MASK).item(), masked_var(rw, MASK).item(),
                entropy_from_logits(lg, MASK).item(), explained_variance(va.detach(), re, MASK),
                lp.grad, va.grad]

    clean = everything(logprobs, old, ref, adv, values, old_values, returns, rewards, logits)
    inputs = (logprobs, old, ref, adv, values, old_values, returns, rewards)
    dirty_args = [with_garbage(x, MASK) for x in inputs]
    dirty_logits = torch.where(MASK.bool()[..., None], logits, torch.tensor(1e30, dtype=torch.float64))
    dirty = everything(*dirty_args, dirty_logits)
    for c, d in zip(clean, dirty):
        if torch.is_tensor(c):
            torch.testing.assert_close(c, d)
        else:
            assert c == pytest.approx(d, abs=1e-9)


# --- KL controllers and the k3 estimator --------------------------------------------------------

def test_fixed_kl_controller():
    ctl = FixedKLController(0.02)
    ctl.update(current_kl=100.0, n_steps=512)
    assert ctl.value == 0.02


def test_adaptive_kl_controller_hand_computed():
    ctl = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10_000)
    # KL 9: e = clip(9/6 - 1 = 0.5, -0.2, 0.2) = 0.2;  beta = 0.1 * (1 + 0.2 * 256/10000) = 0.100512
    ctl.update(current_kl=9.0, n_steps=256)
    assert ctl.value == pytest.approx(0.100512)
    # KL 5.4: e = 0.9 - 1 = -0.1;  beta = 0.100512 * (1 - 0.1 * 100/10000) = 0.100512 * 0.999
    ctl.update(current_kl=torch.tensor(5.4), n_steps=100)
    assert ctl.value == pytest.approx(0.100512 * 0.999)
    before = ctl.value
    ctl.update(current_kl=6.0, n_steps=1000)                 # on target: e = 0, unchanged
    assert ctl.value == pytest.approx(before)


def test_k3_is_nonnegative_and_estimates_kl_policy_to_reference():
    delta = torch.linspace(-5, 5, 101)
    assert (k3_kl(delta, torch.zeros_like(delta)) >= 0).all()
    assert k3_kl(torch.tensor([-1.3]), torch.tensor([-1.3])).item() == 0.0
    # exact expectation over a small categorical, actions drawn from pi
    pi = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    pi_ref = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    kl_pi_ref = sum(p * math.log(p / q) for p, q in zip(pi.tolist(), pi_ref.tolist()))   # KL(pi || pi_ref)
    kl_ref_pi = sum(q * math.log(q / p) for p, q in zip(pi.tolist(), pi_ref.tolist()))   # KL(pi_ref || pi)
    expectation = (pi * k3_kl(pi.log(), pi_ref.log())).sum().item()
    assert expectation == pytest.approx(kl_pi_ref, abs=1e-12)
    # the reversed-direction bug, exp(D) - 1 - D under pi, estimates neither KL
    d = pi.log() - pi_ref.log()
    reversed_expectation = (pi * (torch.exp(d) - 1 - d)).sum().item()
    assert reversed_expectation != pytest.approx(kl_pi_ref, abs=1e-3)
    assert reversed_expectation != pytest.approx(kl_ref_pi, abs=1e-3)
    # k1 (the reward's estimator) has the same expectation, but can be negative per sample
    assert (pi * d).sum().item() == pytest.approx(kl_pi_ref, abs=1e-12) and d.min() < 0


# --- GRPO's group advantages ------------------------------------------------------------------

def test_rloo_advantages_by_hand():
    # group 1: scores 1, 2, 4, -1 (sum 6): the others' means are 5/3, 4/3, 2/3, 7/3
    # group 2: scores 0.5, 0.5, 3, 3 (sum 7): 6.5/3 for each 0.5, 4/3 for each 3
    scores = torch.tensor([1.0, 2.0, 4.0, -1.0, 0.5, 0.5, 3.0, 3.0])
    expected = [1 - 5 / 3, 2 - 4 / 3, 4 - 2 / 3, -1 - 7 / 3,
                0.5 - 6.5 / 3, 0.5 - 6.5 / 3, 3 - 4 / 3, 3 - 4 / 3]
    np.testing.assert_allclose(rloo_advantages(scores, 4).numpy(), expected, rtol=1e-6)
    # = G/(G−1) · (R_i − the group's mean): GRPO's centring, rescaled, never divided by the std
    centred = scores.view(2, 4) - scores.view(2, 4).mean(1, keepdim=True)
    np.testing.assert_allclose(rloo_advantages(scores, 4).numpy(), (4 / 3 * centred).view(-1).numpy(),
                               rtol=1e-6)
    assert rloo_advantages(torch.tensor([2.0, 2.0, 2.0]), 3).abs().max().item() == 0   # equal scores: 0
    with pytest.raises(ValueError):
        rloo_advantages(scores, 1)


def test_group_advantages_against_numpy_per_group():
    scores = torch.tensor([1.0, 2.0, 4.0, -1.0, 0.5, 0.5, 3.0, 3.0, 0.0, 10.0, 7.0, 1.0])
    adv = group_advantages(scores, 4, eps=1e-4)
    for g in range(3):
        x = scores[4 * g: 4 * g + 4].numpy().astype(np.float64)
        expected = (x - x.mean()) / (x.std(ddof=1) + 1e-4)
        np.testing.assert_allclose(adv[4 * g: 4 * g + 4].numpy(), expected, rtol=1e-5)
        assert abs(adv[4 * g: 4 * g + 4].sum().item()) < 1e-5          # each group's mean is the baseline: 0


def test_group_advantages_equal_scores_and_single_samples_give_zero_not_nan():
    adv = group_advantages(torch.tensor([0.7, 0.7, 0.7, 2.0, 1.0, 2.0]), 3)
    assert torch.equal(adv[:3], torch.zeros(3)) and torch.isfinite(adv).all() and adv[3] > 0 > adv[4]
    assert torch.equal(group_advantages(torch.tensor([1.0, -5.0, 3.0]), 1), torch.zeros(3))
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(torch.zeros(6), 4)
