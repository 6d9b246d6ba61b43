"""The math of PPO for language models, one small function per idea.

Shapes: B rollouts, N response tokens (right-padded); mask (B, N) is 1 on real response tokens
(up to and including EOS) and 0 on padding. Every function here ignores what sits at pad
positions: garbage there changes no loss and no statistic.

The order of use in train_ppo.py:
  rewards, kl = kl_penalty_rewards(...)     per-token reward: -beta*KL, plus the RM score at the end
  advantages, returns = gae(...)            generalised advantage estimation (gamma=1, lam=0.95)
  advantages = masked_whiten(advantages)    normalise over the batch
  policy_loss(...) + 0.1 * value_loss(...)  clipped PPO objectives
"""

import torch


def _zero_pads(x, mask):
    """x with every pad position set to 0 (NaN/inf there included), so pads cannot leak."""
    return torch.where(mask.bool(), x, torch.zeros_like(x))


# mean_M(x) = sum_t x_t m_t / sum_t m_t
def masked_mean(x, mask, dim=None):
    """Mean of x over the entries where mask is 1; over all entries (dim=None) or along dim.

    x and mask have the same shape. An empty mask gives 0, not NaN.
    """
    x = _zero_pads(x, mask)
    m = mask.to(x.dtype)
    if dim is None:
        return x.sum() / m.sum().clamp(min=1)
    return x.sum(dim) / m.sum(dim).clamp(min=1)


# var_M(x) = mean_M((x - mean_M(x))^2) * n/(n-1) when unbiased,  n = sum_t m_t
def masked_var(x, mask, unbiased=True):
    """Variance of x over the entries where mask is 1 (a scalar over all of them).

    unbiased=True applies Bessel's correction n/(n-1); with fewer than 2 entries it is skipped.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


# whiten(x) = (x - mean_M(x)) / sqrt(var_M(x) + 1e-8)
def masked_whiten(x, mask, eps=1e-8):
    """Normalise x to mean 0, variance 1 over the real entries; pad positions come back as 0 (the
    advantages)."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    return _zero_pads((x - mean) * torch.rsqrt(var + eps), mask)


# kl_t = log pi(y_t) - log pi_ref(y_t)       (k1 estimator, per token)
# r_t  = -kl_coef * kl_t  + [t == last real token] * score
def kl_penalty_rewards(logprobs, ref_logprobs, score, mask, kl_coef):
    """Per-token rewards for PPO -> (rewards (B, N), kl (B, N)); both 0 at pads.

    logprobs, ref_logprobs (B, N) are the sampled tokens' log-probs under the policy and the frozen
    reference; score (B,) is the reward model's score of each whole response. It is added at the
    LAST real response token of each row (the last index where mask == 1), never at a pad.
    """
    kl = _zero_pads(logprobs - ref_logprobs, mask)                         # (B, N)
    rewards = -kl_coef * kl                                                 # (B, N)
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)           # (B, N)
    last = torch.where(mask.bool(), positions, torch.full_like(positions, -1)).max(dim=1).values  # (B,)
    if (last < 0).any():
        raise ValueError("kl_penalty_rewards: every row needs at least one real response token")
    rows = torch.arange(mask.shape[0], device=mask.device)                 # (B,)
    rewards[rows, last] += score.to(rewards.dtype)
    return rewards, kl


# A_i = (r_i − mean(r_1..r_G)) / (std(r_1..r_G) + eps)      for the G samples i of one prompt
def group_advantages(scores, group_size, eps=1e-4):
    """GRPO's advantage (Shao et al. 2024): each sample's score relative to the other samples of its prompt,
    so the group is the baseline and no value model is needed.

    scores (B,) with B = n_prompts * group_size, each prompt's samples contiguous -> (B,). A group whose
    scores are all equal (or of one sample) gives 0 advantages: nothing to prefer, no NaN. The std is the
    unbiased one, as the paper's code computes it."""
    if scores.numel() % group_size:
        raise ValueError(f"group_advantages: {scores.numel()} scores do not split into groups of "
                         f"{group_size}")
    groups = scores.float().view(-1, group_size)                            # (n_prompts, G)
    if group_size == 1:
        return torch.zeros_like(scores, dtype=torch.float32)
    centred = groups - groups.mean(dim=1, keepdim=True)                     # the group mean is the baseline
    return (centred / (groups.std(dim=1, keepdim=True) + eps)).view(-1)


# A_i = R_i − (1/(G−1)) Σ_{j≠i} R_j  =  G/(G−1) · (R_i − mean(R_1..R_G))
def rloo_advantages(scores, group_size):
    """RLOO's advantage (Ahmadian et al. 2024, "Back to Basics"): each sample's score minus the mean score of
    the OTHER samples of its prompt, a baseline that does not contain the sample itself (so the estimate of
    the policy gradient stays unbiased), and no division by the group's std: the scores keep their scale.

    scores (B,) with B = n_prompts * group_size, each prompt's samples contiguous -> (B,); needs G >= 2."""
    if group_size < 2 or scores.numel() % group_size:
        raise ValueError(f"rloo_advantages: {scores.numel()} scores in groups of {group_size} (need G >= 2 "
                         "dividing them)")
    groups = scores.float().view(-1, group_size)                            # (n_prompts, G)
    others = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)  # mean of the other G−1
    return (groups - others).view(-1)


# delta_t = r_t + gamma * V_{t+1} - V_t           (V past the last real token = 0)
# A_t     = delta_t + gamma * lam * A_{t+1}       (A past the last real token = 0)
# R_t     = A_t + V_t                             (the value function's target)
@torch.no_grad()
def gae(rewards, values, mask, gamma=1.0, lam=0.95):
    """Generalised advantage estimation over the response tokens -> (advantages, returns), (B, N).

    rewards, values, mask (B, N), right-padded. Pads get 0 advantage and 0 return. Runs without
    gradients: advantages and returns are targets, not things to differentiate.
    """
    rewards, values = _zero_pads(rewards, mask), _zero_pads(values, mask)
    m = mask.to(values.dtype)
    N = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])                            # (B,) V_{t+1}
    next_advantage = torch.zeros_like(rewards[:, 0])                        # (B,) A_{t+1}
    for t in reversed(range(N)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * m[:, t]   # pads: 0
        next_value, next_advantage = values[:, t], advantages[:, t]           # both 0 at pads
    returns = (advantages + values) * m
    return advantages, returns


# ratio_t = exp(log pi(y_t) - log pi_old(y_t))
# L_pg    = mean_M( max(-A_t * ratio_t, -A_t * clip(ratio_t, 1-eps, 1+eps)) )
def policy_loss(logprobs, old_logprobs, advantages, mask, clip=0.2):
    """PPO's clipped surrogate loss -> (loss, stats).

    logprobs (B, N) carry gradients (current policy); old_logprobs and advantages (B, N) are
    fixed from the rollout. stats (python floats):
      clipfrac   fraction of tokens where the clipped term won (its gradient is zero there)
      approx_kl  1/2 mean((log pi - log pi_old)^2), how far this epoch has moved the policy
      ratio_mean mean ratio; exactly 1 on the first minibatch of the first epoch
    """
    log_ratio = _zero_pads(logprobs - old_logprobs, mask)                  # (B, N) 0 at pads, no inf
    advantages = _zero_pads(advantages, mask)
    ratio = torch.exp(log_ratio)                                            # (B, N)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        stats = dict(
            clipfrac=masked_mean((clipped > unclipped).float(), mask).item(),
            approx_kl=0.5 * masked_mean(log_ratio ** 2, mask).item(),
            ratio_mean=masked_mean(ratio, mask).item(),
        )
    return loss, stats


# V_clip = V_old + clip(V - V_old, -c, c)
# L_vf   = 0.5 * mean_M( max((V - R)^2, (V_clip - R)^2) )
def value_loss(values, old_values, returns, mask, clip=0.2):
    """Clipped value loss -> (loss, vf_clipfrac); vf_clipfrac (python float) is the fraction of
    tokens where the clipped error was the larger one.

    values (B, N) carry gradients; old_values (from the rollout) and returns (B, N) are fixed.
    """
    values = _zero_pads(values, mask)
    old_values, returns = _zero_pads(old_values, mask), _zero_pads(returns, mask)
    values_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    err = (values - returns) ** 2
    err_clipped = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(err, err_clipped), mask)
    vf_clipfrac = masked_mean((err_clipped > err).float(), mask).item()
    return loss, vf_clipfrac


# H_t = -sum_v p_v log p_v = logsumexp(z) - sum_v softmax(z)_v z_v
def entropy_from_logits(logits, mask):
    """Mean entropy (nats) of the next-token distributions at the real positions.

    logits (B, N, V), mask (B, N) -> scalar. Used for logging (no entropy bonus in InstructGPT).
    """
    logits = _zero_pads(logits.float(), mask.unsqueeze(-1))       # (B, N, V)
    entropy = torch.logsumexp(logits, dim=-1) - (torch.softmax(logits, dim=-1) * logits).sum(-1)  # (B, N)
    return masked_mean(entropy, mask)


# EV = 1 - var_M(R - V) / var_M(R)       (1: perfect values, 0: no better than a constant)
def explained_variance(values, returns, mask):
    """How much of the returns' variance the value function explains (python float, NaN if var(R)=0)."""
    var_returns = masked_var(returns, mask).item()
    if var_returns == 0:
        return float("nan")
    return 1.0 - masked_var(returns - values, mask).item() / var_returns


# k3_t = exp(-Delta_t) - 1 + Delta_t,   Delta_t = log pi(y_t) - log pi_ref(y_t),   y_t ~ pi
def k3_kl(logprobs, ref_logprobs):
    """Per-token k3 estimator of KL(pi || pi_ref) (Schulman's): >= 0 always, unbiased under
    samples from pi, lower variance than k1. PPO logs it as kl_k3 (its reward uses k1); GRPO puts
    beta * k3 into its loss.

    A known bug in public code reverses the direction: exp(Delta) - 1 - Delta estimates
    KL(pi_ref || pi) only under samples from pi_ref, which is not what the rollout draws.
    """
    delta = logprobs - ref_logprobs
    return torch.exp(-delta) - 1.0 + delta


class FixedKLController:
    """A constant KL coefficient beta (InstructGPT: 0.02)."""

    def __init__(self, kl_coef):
        self.value = float(kl_coef)

    def update(self, current_kl, n_steps):
        pass


# e = clip(KL / target - 1, -0.2, 0.2);   beta <- beta * (1 + e * n_steps / horizon)
class AdaptiveKLController:
    """Ziegler et al. 2019: move beta so that the measured KL drifts towards `target` nats.

    current_kl is the batch's mean KL per response (summed over tokens); n_steps the number of
    rollouts (episodes) in that batch.
    """

    def __init__(self, init_kl_coef, target, horizon):
        self.value, self.target, self.horizon = float(init_kl_coef), float(target), float(horizon)

    def update(self, current_kl, n_steps):
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
